//go:build race

package metad

const raceEnabled = true
