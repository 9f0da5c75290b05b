package casfs_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"

	"stasis/blockd"
	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
)

// packEnv is casfs over a pack store, as embedded mode runs it: read-ahead
// goes through the store's batched reads (blockd.BatchGetter).
type packEnv struct {
	pack *blockd.PackStore
	svc  *metad.Service
}

func newPackEnv(t *testing.T) *packEnv {
	t.Helper()
	pack, err := blockd.OpenPack(blockd.PackConfig{Dir: t.TempDir(), Small: true, PackSize: 4 << 20, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pack.Close() })
	return &packEnv{pack: pack, svc: testenv.OpenMeta(t, "", pack, cas.Fixed(64<<10))}
}

// mount is a fresh FS (cold chunk cache) over the stores.
func (p *packEnv) mount(t *testing.T, cfg casfs.Config) *testenv.Env {
	cfg.Transport = casfs.StoreTransport{Store: p.pack}
	return testenv.New(t, testenv.Options{Meta: p.svc, FS: cfg})
}

// readSeq reads n from h in 128 KiB reads, as the kernel does, and returns
// what it read before the first error.
func readSeq(t *testing.T, h *casfs.Handle, n int) ([]byte, error) {
	return readSeqFrom(t, h, 0, n)
}

// readSeqFrom is readSeq from offset from.
func readSeqFrom(t *testing.T, h *casfs.Handle, from, n int) ([]byte, error) {
	out := make([]byte, n)
	for off := 0; off < n; {
		k, err := h.Read(ctxT(t), out[off:min(n, off+128<<10)], int64(from+off))
		if err != nil {
			return out[:off], err
		}
		if k == 0 {
			return out[:off], nil
		}
		off += k
	}
	return out, nil
}

// where finds a chunk's record in the pack files: the file and the offset
// of its record header (the ID is at offset 8 of a record).
func where(t *testing.T, s *blockd.PackStore, id cas.ChunkID) (string, int64) {
	t.Helper()
	for _, p := range s.Packs() {
		b, err := os.ReadFile(p.Path)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, id[:]); i >= 0 {
			return p.Path, int64(i - 8)
		}
	}
	t.Fatalf("chunk %s in no pack", id.Short())
	return "", 0
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A cold sequential read through batched read-ahead returns the file, and
// the chunks come from batches (few fetches for the reader itself); a
// damaged chunk in a batch is an error at its offset, never wrong bytes,
// and the bytes before it are right; so is a chunk that is gone.
func TestBatchedReadAheadOverPacks(t *testing.T) {
	p := newPackEnv(t)
	const size = 24<<20 + 1000 // several packs, a partial last chunk
	data := randomData(41, size)
	e := p.mount(t, casfs.Config{BatchBytes: 2 << 20}) // regions of 2 MiB: packs are cut between them
	h, n := create(t, e, "f", "fixed:64k")
	writeAll(t, h, data, 0, 1<<20)
	mustClose(t, h)
	if len(p.pack.Packs()) < 4 {
		t.Fatalf("%d packs, want several", len(p.pack.Packs()))
	}

	e = p.mount(t, casfs.Config{ReadAheadBytes: 8 << 20})
	h = open(t, e, n, syscall.O_RDONLY)
	got, err := readSeq(t, h, size)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("cold read: %d bytes, %v (differs at %d)", len(got), err, firstDiff(got, data))
	}
	mustClose(t, h)
	st, err := e.FS.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(size>>16 + 1); st.Mount.ChunksFetched != want {
		t.Errorf("fetched %d chunks, want each of %d once", st.Mount.ChunksFetched, want)
	}

	plan, err := p.svc.ReadPlan(ctxT(t), n)
	if err != nil {
		t.Fatal(err)
	}
	ext := plan.Manifest.Extents
	cases := []struct {
		name   string
		damage func(id cas.ChunkID)
		want   []error
	}{
		{"data byte", func(id cas.ChunkID) {
			path, off := where(t, p.pack, id)
			flipByte(t, path, off+44+3000)
		}, []error{cas.ErrHashMismatch, cas.ErrCorruptChunk}},
		{"record header", func(id cas.ChunkID) {
			path, off := where(t, p.pack, id)
			flipByte(t, path, off+1)
		}, []error{blockd.ErrPackCorrupt}},
		{"deleted", func(id cas.ChunkID) {
			if err := p.pack.Delete(ctxT(t), []cas.ChunkID{id}); err != nil {
				t.Fatal(err)
			}
		}, []error{blockd.ErrNotFound}},
	}
	for k, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A chunk well inside the read-ahead window of an
			// earlier read, a different one each time.
			bad := 60 + 40*k
			tc.damage(ext[bad].ID)
			e := p.mount(t, casfs.Config{ReadAheadBytes: 8 << 20})
			h := open(t, e, n, syscall.O_RDONLY)
			defer h.Release(ctxT(t))
			// Read from well before it (and after the chunks the
			// cases before damaged).
			from := int(ext[bad-20].Offset)
			got, err := readSeqFrom(t, h, from, size-from)
			isWant := false
			for _, w := range tc.want {
				isWant = isWant || errors.Is(err, w)
			}
			if !isWant {
				t.Fatalf("read over the damaged chunk = %v, want one of %v", err, tc.want)
			}
			end := uint64(from + len(got)) // where the reader stopped
			if end > ext[bad].Offset || !bytes.Equal(got, data[from:end]) {
				t.Fatalf("read up to %d before the error (damaged chunk at %d); same as the file: %v",
					end, ext[bad].Offset, bytes.Equal(got, data[from:end]))
			}
			if end+128<<10 <= ext[bad].Offset {
				t.Fatalf("the error came at %d, before the damaged chunk at %d", end, ext[bad].Offset)
			}
			t.Logf("error at %d: %v", end, err)
			// The rest of the file still reads.
			rest := make([]byte, 1<<20)
			after := ext[bad].End()
			if k, err := h.Read(ctxT(t), rest, int64(after)); err != nil || !bytes.Equal(rest[:k], data[after:after+uint64(k)]) {
				t.Fatalf("read after the damaged chunk: %d, %v", k, err)
			}
		})
	}
}

// Readers of one chunk share one fetch, whether it is being read ahead
// in a batch or missed by several readers at once.
func TestConcurrentReadersShareFetches(t *testing.T) {
	p := newPackEnv(t)
	const size = 12 << 20
	data := randomData(42, size)
	e := p.mount(t, casfs.Config{})
	h, n := create(t, e, "f", "fixed:64k")
	writeAll(t, h, data, 0, 1<<20)
	mustClose(t, h)

	e = p.mount(t, casfs.Config{ReadAheadBytes: 4 << 20})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			h, _, err := e.FS.Open(context.Background(), n, syscall.O_RDONLY)
			if err != nil {
				errs <- err
				return
			}
			defer h.Release(context.Background())
			got, err := readSeq(t, h, size)
			if err == nil && !bytes.Equal(got, data) {
				err = errors.New("content differs")
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st, err := e.FS.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	// Every chunk fits in the cache: each is fetched once.
	if want := uint64(size >> 16); st.Mount.ChunksFetched != want {
		t.Errorf("fetched %d chunks for 4 readers, want each of %d once", st.Mount.ChunksFetched, want)
	}
}
