package blockd

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"stasis/cas"
)

// TestPackSyncFailureIsSticky: a pack sync that fails in a round nobody
// waits for (a put session's writeback kick) must still fail every later
// write. The failed round took the dirty set, and a later fdatasync on Linux
// does not report the earlier error, so a later round would otherwise find
// nothing to sync and let the chunks be indexed and acknowledged.
func TestPackSyncFailureIsSticky(t *testing.T) {
	s, err := OpenPack(PackConfig{Dir: t.TempDir(), Small: true, MinFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var failing atomic.Bool
	orig := packDatasync
	packDatasync = func(fd int) error {
		if failing.Load() {
			return syscall.EIO
		}
		return orig(fd)
	}
	t.Cleanup(func() { packDatasync = orig })

	chunk := func(i int) Chunk {
		raw := []byte{byte(i), byte(i >> 8), 'p', 'a', 'c', 'k'}
		return Chunk{ID: cas.Sum(raw), Data: cas.Encode(nil, raw)}
	}
	ctx := context.Background()
	if err := s.Put(ctx, []Chunk{chunk(1)}); err != nil {
		t.Fatal(err)
	}
	// A region written and a sync kicked off with nobody waiting, as a put
	// session's writeback does; that round fails.
	p, _, err := s.writeRegion([]Chunk{chunk(2)})
	if err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	before := s.dataSync.Count()
	s.dataSync.Kick()
	deadline := time.Now().Add(10 * time.Second)
	for s.dataSync.Count() == before && s.failedErr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the kicked sync did not run")
		}
		time.Sleep(time.Millisecond)
	}
	s.unplace(p)
	failing.Store(false) // the disk "recovers": later fdatasyncs succeed
	err = s.Put(ctx, []Chunk{chunk(3)})
	if err == nil {
		t.Fatal("Put after a failed pack sync succeeded: its chunk may be indexed over lost data")
	}
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("Put after a failed sync: %v, want it to wrap EIO", err)
	}
	missing, err := s.Missing(ctx, []cas.ChunkID{chunk(2).ID, chunk(3).ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 2 {
		t.Fatalf("chunks written around the failed sync are visible: missing %v", missing)
	}
}
