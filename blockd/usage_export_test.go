package blockd

import "testing"

// ForgetCountsForTest leaves the store in dir as a crash would: without
// the counters a clean Close saves (the chunks are all durable anyway).
func ForgetCountsForTest(tb testing.TB, dir string) {
	tb.Helper()
	s, err := OpenBadger(BadgerConfig{Dir: dir, Small: true, GCInterval: -1})
	if err != nil {
		tb.Fatal(err)
	}
	s.noSaveCounts = true
	if err := s.Close(); err != nil {
		tb.Fatal(err)
	}
}
