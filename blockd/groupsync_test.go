package blockd

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGroupSyncShares(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int64
	g := newGroupSync(func() error {
		if started.Add(1) == 1 {
			<-release // the first sync is slow
		}
		return nil
	})
	var wg sync.WaitGroup
	wg.Go(func() { g.Sync() })
	for started.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// Ten writers arrive while the first sync runs: they must share one
	// (or, for a writer that arrives after that one started, one more).
	var joined atomic.Int64
	for range 10 {
		wg.Go(func() {
			joined.Add(1)
			if err := g.Sync(); err != nil {
				t.Error(err)
			}
		})
	}
	for joined.Load() < 10 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := g.Count(); n < 2 || n > 3 {
		t.Fatalf("11 writers ran %d syncs; want 2 (3 at most)", n)
	}
}

func TestGroupSyncError(t *testing.T) {
	boom := errors.New("disk on fire")
	fail := true
	g := newGroupSync(func() error {
		if fail {
			return boom
		}
		return nil
	})
	if err := g.Sync(); !errors.Is(err, boom) {
		t.Fatalf("Sync = %v, want the sync's error", err)
	}
	fail = false
	if err := g.Sync(); err != nil {
		t.Fatalf("Sync after recovery = %v", err)
	}
}

// TestGroupSyncKick: Kick starts a sync without waiting for it, a Kick
// while one runs adds none, and a Sync that arrives while a kicked sync
// runs still waits for a sync that starts after it.
func TestGroupSyncKick(t *testing.T) {
	release := make(chan struct{}, 10)
	var started, finished atomic.Int64
	g := newGroupSync(func() error {
		started.Add(1)
		<-release
		finished.Add(1)
		return nil
	})
	g.Kick() // must not block although the sync does
	deadline := time.Now().Add(10 * time.Second)
	for started.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Kick started no sync")
		}
		time.Sleep(time.Millisecond)
	}
	g.Kick()
	g.Kick()
	done := make(chan error, 1)
	go func() { done <- g.Sync() }()
	time.Sleep(20 * time.Millisecond)
	release <- struct{}{} // the kicked sync ends
	select {
	case <-done:
		t.Fatal("Sync returned with the sync that started before it")
	case <-time.After(50 * time.Millisecond):
	}
	release <- struct{}{} // the Sync's own round ends
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Sync did not return")
	}
	if n := g.Count(); n != 2 {
		t.Fatalf("three kicks and a sync ran %d syncs, want 2", n)
	}
}
