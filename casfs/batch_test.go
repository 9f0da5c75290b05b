package casfs_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"stasis/casfs"
	"stasis/casfs/internal/testenv"
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
	e := testenv.New(t, testenv.Options{FS: casfs.Config{BatchBytes: batch}})
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
