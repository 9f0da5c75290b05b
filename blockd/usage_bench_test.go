package blockd_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"stasis/blockd"
	"stasis/blockd/storetest"
)

// BenchmarkBadgerOpen measures opening a store of BLOCKD_OPEN_CHUNKS
// (default 20000) 16 KiB chunks, which includes counting what it holds for
// Usage and Stats: after a clean Close and after a crash (no Close: the
// counters must be rebuilt), with the page cache warm and (as root) cold.
func BenchmarkBadgerOpen(b *testing.B) {
	n := 20000
	if v, err := strconv.Atoi(os.Getenv("BLOCKD_OPEN_CHUNKS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	dir := b.TempDir()
	s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: dir, Small: true, GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	var want blockd.Usage
	for i := 0; i < n; i += 1000 {
		chunks := storetest.Chunks(uint64(i), min(1000, n-i), 16<<10)
		if err := s.Put(ctx, chunks); err != nil {
			b.Fatal(err)
		}
		u := storetest.WantUsage(chunks)
		want.Chunks += u.Chunks
		want.EncodedBytes += u.EncodedBytes
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	open := func(b *testing.B) *blockd.BadgerStore {
		s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: dir, Small: true, GCInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		if u, err := s.Usage(ctx); err != nil || u != want {
			b.Fatalf("Usage after open = %+v, %v; want %+v", u, err, want)
		}
		return s
	}
	dropCaches := func(b *testing.B) {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
			b.Skipf("cannot drop the page cache: %v", err)
		}
	}
	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		b.Run("clean/"+name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				if cold {
					dropCaches(b)
				}
				b.StartTimer()
				s := open(b)
				b.StopTimer()
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
		b.Run("crashed/"+name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				blockd.ForgetCountsForTest(b, dir)
				if cold {
					dropCaches(b)
				}
				b.StartTimer()
				s := open(b)
				b.StopTimer()
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
