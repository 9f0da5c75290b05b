package blockd

import (
	"context"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"stasis/cas"
)

// A chunk committed by a Put whose sync has not finished is visible in
// badger but not yet durable: Missing and Get must not report it until a
// sync has covered it (else metad could skip an upload of a chunk that a
// crash then loses).
func TestPendingChunksWaitForSync(t *testing.T) {
	s, err := OpenBadger(BadgerConfig{Dir: t.TempDir(), Small: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := make(chan struct{})
	released := false
	defer func() { // on failure too: the blocked Put must finish before Close
		if !released {
			close(release)
		}
	}()
	s.gs = newGroupSync(func() error { <-release; return s.db.Sync() })

	raw := []byte("a chunk whose sync is slow")
	c := Chunk{ID: cas.Sum(raw), Data: cas.Encode(nil, raw)}
	putDone := make(chan error, 1)
	go func() { putDone <- s.Put(context.Background(), []Chunk{c}) }()
	// Wait until the chunk is committed (visible in badger).
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := s.db.View(func(txn *badger.Txn) error { _, err := txn.Get(chunkKey(c.ID)); return err })
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("chunk never committed")
		}
		time.Sleep(time.Millisecond)
	}
	missingDone := make(chan []cas.ChunkID, 1)
	go func() {
		m, err := s.Missing(context.Background(), []cas.ChunkID{c.ID})
		if err != nil {
			t.Error(err)
		}
		missingDone <- m
	}()
	getDone := make(chan error, 1)
	go func() { _, err := s.Get(context.Background(), c.ID); getDone <- err }()
	select {
	case <-missingDone:
		t.Fatal("Missing reported a committed chunk before its sync")
	case <-getDone:
		t.Fatal("Get returned a committed chunk before its sync")
	case <-putDone:
		t.Fatal("Put returned before its sync")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	released = true
	if err := <-putDone; err != nil {
		t.Fatal(err)
	}
	if m := <-missingDone; len(m) != 0 {
		t.Fatalf("Missing = %v after the sync", m)
	}
	if err := <-getDone; err != nil {
		t.Fatal(err)
	}
	if n := s.pending.len(); n != 0 {
		t.Fatalf("%d chunks still pending", n)
	}
}
