package blockd_test

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/blockd/storetest"
	"stasis/cas"
)

func openBadger(t testing.TB, dir string) *blockd.BadgerStore {
	t.Helper()
	s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: dir, Small: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBadgerConformance(t *testing.T) {
	var mu sync.Mutex
	dirs := map[blockd.PruneStore]string{}
	storetest.RunOptions(t, func(t *testing.T) blockd.PruneStore {
		dir := t.TempDir()
		s := openBadger(t, dir)
		mu.Lock()
		dirs[s] = dir
		mu.Unlock()
		return s
	}, storetest.Options{Reopen: func(t *testing.T, s blockd.PruneStore) blockd.PruneStore {
		mu.Lock()
		dir := dirs[s]
		mu.Unlock()
		if err := s.(*blockd.BadgerStore).Close(); err != nil {
			t.Fatal(err)
		}
		s2 := openBadger(t, dir)
		mu.Lock()
		dirs[s2] = dir
		mu.Unlock()
		return s2
	}})
}

func TestBadgerReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openBadger(t, dir)
	chunks := storetest.Chunks(1, 50, 20000)
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, storetest.IDs(chunks[:10])); err != nil {
		t.Fatal(err)
	}
	want := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, chunks[20].ID); !errors.Is(err, blockd.ErrClosed) {
		t.Fatalf("Get after Close = %v", err)
	}
	if err := s.Put(ctx, chunks[:1]); !errors.Is(err, blockd.ErrClosed) {
		t.Fatalf("Put after Close = %v", err)
	}
	s2 := openBadger(t, dir)
	storetest.CheckHolds(t, s2, chunks[10:])
	if got := s2.Stats(); got != want {
		t.Fatalf("Stats after reopen = %+v, want %+v (counted at open)", got, want)
	}
}

func TestBadgerConfig(t *testing.T) {
	if _, err := blockd.OpenBadger(blockd.BadgerConfig{}); err == nil {
		t.Error("opened without a Dir")
	}
	if _, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: t.TempDir(), GCDiscardRatio: 1.5}); err == nil {
		t.Error("accepted discard ratio 1.5")
	}
	// A directory that cannot be created.
	if _, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: "/proc/blockd-test", Small: true}); err == nil {
		t.Error("opened in /proc")
	}
}

// TestBadgerGroupCommit shows concurrent Puts sharing syncs: 16 writers
// putting one chunk at a time need far fewer syncs than puts.
func TestBadgerGroupCommit(t *testing.T) {
	s := openBadger(t, t.TempDir())
	ctx := context.Background()
	const writers, each = 16, 20
	before := s.Syncs()
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for _, c := range storetest.Chunks(uint64(1000+g), each, 8<<10) {
				if err := s.Put(ctx, []blockd.Chunk{c}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	syncs := s.Syncs() - before
	t.Logf("%d puts, %d syncs", writers*each, syncs)
	if syncs < 1 || syncs >= writers*each {
		t.Fatalf("%d puts ran %d syncs; group commit should share them", writers*each, syncs)
	}
}

func TestBadgerValueLogGC(t *testing.T) {
	s := openBadger(t, t.TempDir())
	ctx := context.Background()
	chunks := storetest.Chunks(3, 64, 64<<10)
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, storetest.IDs(chunks[:60])); err != nil {
		t.Fatal(err)
	}
	s.RunGC(0.5) // may or may not rewrite (badger samples); must not break reads
	storetest.CheckHolds(t, s, chunks[60:])
}

func TestBadgerGCLoopStopsOnClose(t *testing.T) {
	s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: t.TempDir(), Small: true, GCInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // let the loop run a few rounds
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop the GC loop")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestVerifyDecorator(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	v := blockd.Verify(mem)
	if _, ok := v.(blockd.PruneStore); !ok {
		t.Fatal("Verify of a PruneStore is not a PruneStore")
	}
	good := storetest.Chunks(4, 3, 1000)
	bad := good[1]
	bad.Data = cas.Encode(nil, []byte("not what the id says"))
	var re *blockd.RejectError
	err := v.Put(ctx, []blockd.Chunk{good[0], bad, good[2]})
	if !errors.As(err, &re) || re.ID != bad.ID || re.Reason != blockd.ReasonHashMismatch || !errors.Is(err, cas.ErrHashMismatch) {
		t.Fatalf("Put with a wrong-hash chunk = %v", err)
	}
	corrupt := blockd.Chunk{ID: good[0].ID, Data: []byte{1, 0x80}}
	if err := v.Put(ctx, []blockd.Chunk{corrupt}); !errors.As(err, &re) || re.Reason != blockd.ReasonCorrupt || !errors.Is(err, cas.ErrCorruptChunk) {
		t.Fatalf("Put with a corrupt chunk = %v", err)
	}
	huge := blockd.Chunk{ID: good[0].ID, Data: make([]byte, cas.MaxEncodedSize+1)}
	if err := v.Put(ctx, []blockd.Chunk{huge}); !errors.As(err, &re) || re.Reason != blockd.ReasonTooLarge {
		t.Fatalf("Put with an oversize chunk = %v", err)
	}
	storetest.CheckHolds(t, mem, nil) // a refused batch stores nothing
	if err := v.Put(ctx, good); err != nil {
		t.Fatal(err)
	}
	storetest.CheckHolds(t, mem, good)
	storetest.Run(t, func(*testing.T) blockd.PruneStore { return blockd.Verify(blockd.NewMemStore()).(blockd.PruneStore) })
}

// TestBadgerDiskFull fills a real (small tmpfs) file system through the
// HTTP server: puts are refused with ErrNoSpace / 507 before badger's
// memory-mapped writes could hit the full disk (which would kill the
// process with SIGBUS), every acknowledged chunk stays readable, and the
// store reopens intact.
func TestBadgerDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=24m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	ctx := context.Background()
	cfg := blockd.BadgerConfig{Dir: dir, Small: true, GCInterval: -1, MinFreeBytes: 8 << 20}
	st, err := blockd.OpenBadger(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ts := startServer(t, st, 0)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	var acked []blockd.Chunk
	for i := 0; i < 400; i++ {
		batch := storetest.Chunks(uint64(5000+i), 16, 64<<10)
		if err = c.Put(ctx, batch); err != nil {
			break
		}
		acked = append(acked, batch...)
	}
	var se *blockd.StatusError
	if !errors.Is(err, blockd.ErrNoSpace) || !errors.As(err, &se) || se.Code != 507 {
		t.Fatalf("filling a 24 MiB file system: %v after %d chunks", err, len(acked))
	}
	t.Logf("refused after %d chunks (%d MiB): %v", len(acked), len(acked)>>4, err)
	if len(acked) == 0 {
		t.Fatal("nothing fit")
	}
	// A refused Put stored nothing of its batch: the store holds exactly
	// what was acknowledged.
	storetest.CheckHolds(t, st, acked)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2, err := blockd.OpenBadger(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	storetest.CheckHolds(t, st2, acked)
}
