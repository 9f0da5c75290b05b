package casfs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"stasis/casfs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
)

// randomData returns n incompressible, never-repeating bytes.
func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

// A writer that pauses between writes (slower than the workers, or
// descheduled) must not cut batches short: every batch costs a
// PrepareUpload and a block store fsync.
func TestPausedWriterKeepsBatchesFull(t *testing.T) {
	const batch = 4 << 20
	// Only fullness may cut a batch here: with the default idle flush of
	// 100 ms, a loaded machine (-race, QEMU suites beside it) cut batches
	// short in CI (8 Puts instead of 4) when the writer or the hashing
	// workers were descheduled between two writes.
	e := testenv.New(t, testenv.Options{FS: casfs.Config{BatchBytes: batch, BatchIdle: time.Hour}})
	data := randomData(1, 4*batch)
	h, n := create(t, e, "paused", "fixed:64k")
	for off := 0; off < len(data); off += 256 << 10 {
		writeAll(t, h, data[off:off+256<<10], int64(off), 256<<10)
		time.Sleep(3 * time.Millisecond)
	}
	mustClose(t, h)
	if got := e.Blocks.Puts(); got != 4 {
		t.Errorf("%d MiB written in %d MiB batches took %d Puts, want 4", len(data)>>20, batch>>20, got)
	}
	r := open(t, e, n, 0)
	defer r.Release(ctxT(t))
	if got := readAll(t, r, len(data)); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

// When the pipeline's memory is smaller than a batch, the writer waits for
// memory held only by the partial batch: the batch must go out (and the
// write finish) rather than wait for a batch that cannot fill.
func TestStarvedWriterFlushesPartialBatch(t *testing.T) {
	e := testenv.New(t, testenv.Options{FS: casfs.Config{InFlightBytes: 16 << 20, BatchBytes: 64 << 20}})
	data := randomData(2, 48<<20)
	h, n := create(t, e, "starved", "fixed:64k")
	done := make(chan error, 1)
	go func() {
		ctx := ctxT(t)
		for off := 0; off < len(data); off += 1 << 20 {
			if _, err := h.Write(ctx, data[off:off+1<<20], int64(off)); err != nil {
				done <- err
				return
			}
		}
		done <- errors.Join(h.Flush(ctx), h.Release(ctx))
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("writer still blocked after a minute")
	}
	if puts := e.Blocks.Puts(); puts < 6 {
		t.Errorf("48 MiB through 16 MiB of pipeline memory took %d Puts, want at least 6", puts)
	}
	r := open(t, e, n, 0)
	defer r.Release(ctxT(t))
	if got := readAll(t, r, len(data)); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

// Chunks wait in a writer's pending group (up to about 1 MiB) before the
// workers get them. Writers whose pending groups together need more than
// the pipeline's memory must not deadlock: a writer about to wait for
// memory hands its own pending chunks on first. Here 12 writers each write
// just under 1 MiB of 4 KiB chunks (about 2 MiB of pipeline memory each,
// none dispatched by size) and wait for one another before going on; 16 MiB
// of memory holds only 7 of those groups.
func TestManyWritersShareSmallMemory(t *testing.T) {
	e := testenv.New(t, testenv.Options{FS: casfs.Config{InFlightBytes: 16 << 20, BatchBytes: 64 << 20}})
	const writers, size, step, first = 12, 2 << 20, 60 << 10, 17 * (60 << 10)
	data := make([][]byte, writers)
	nodes := make([]metad.Node, writers)
	done := make(chan error, writers)
	var arrived sync.WaitGroup
	arrived.Add(writers)
	all := make(chan struct{})
	for i := range writers {
		data[i] = randomData(uint64(10+i), size)
		h, n := create(t, e, fmt.Sprintf("w%d", i), "fixed:4096")
		nodes[i] = n
		go func() {
			ctx := ctxT(t)
			write := func(from, to int) error {
				for off := from; off < to; off += step {
					if _, err := h.Write(ctx, data[i][off:min(to, off+step)], int64(off)); err != nil {
						return err
					}
				}
				return nil
			}
			err := write(0, first)
			arrived.Done()
			if err != nil {
				done <- err
				return
			}
			<-all
			if err := write(first, size); err != nil {
				done <- err
				return
			}
			done <- errors.Join(h.Flush(ctx), h.Release(ctx))
		}()
	}
	waited := make(chan struct{})
	go func() { arrived.Wait(); close(waited) }()
	select {
	case <-waited:
		close(all)
	case <-time.After(time.Minute):
		t.Fatal("writers still blocked in their first MiB after a minute")
	}
	deadline := time.After(time.Minute)
	for range writers {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("writers still blocked after a minute")
		}
	}
	for i, n := range nodes {
		r := open(t, e, n, 0)
		if got := readAll(t, r, size); !bytes.Equal(got, data[i]) {
			t.Fatalf("file %d: content differs", i)
		}
		r.Release(ctxT(t))
	}
}

// A writer waiting for pipeline memory gives up when its context ends (a
// FUSE write is bounded so) with an error that sticks to the file, and the
// file keeps its last committed content.
func TestWriterWaitingForMemoryGivesUp(t *testing.T) {
	e := testenv.New(t, testenv.Options{FS: casfs.Config{InFlightBytes: 16 << 20, BatchBytes: 64 << 20}})
	h, n := create(t, e, "slow", "fixed:64k")
	e.Blocks.SetPutDelay(3 * time.Second)
	data := randomData(3, 32<<20)
	var werr error
	start := time.Now()
	for off := 0; off < len(data) && werr == nil; off += 1 << 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, werr = h.Write(ctx, data[off:off+1<<20], int64(off))
		cancel()
	}
	if werr == nil || !errors.Is(werr, context.DeadlineExceeded) {
		t.Fatalf("32 MiB through 16 MiB of memory with 3 s Puts and 300 ms writes: %v, want a deadline error", werr)
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Fatalf("the writes took %v: the waiting one did not give up at its deadline", d)
	}
	if err := h.Flush(ctxT(t)); err == nil {
		t.Fatal("flush after a failed write succeeded")
	}
	h.Release(ctxT(t))
	e.Blocks.SetPutDelay(0)
	r := open(t, e, n, 0)
	defer r.Release(ctxT(t))
	if got := readAll(t, r, 1<<20); len(got) != 0 {
		t.Fatalf("the file has %d bytes after its writes failed, want its committed 0", len(got))
	}
}
