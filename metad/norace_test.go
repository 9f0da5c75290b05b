//go:build !race

package metad

const raceEnabled = false
