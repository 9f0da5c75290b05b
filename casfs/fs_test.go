package casfs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// create makes a regular file under the root and opens it read-write.
func create(t *testing.T, e *testenv.Env, name, policy string) (*casfs.Handle, metad.Node) {
	t.Helper()
	ctx := ctxT(t)
	a, err := e.FS.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: name, Mode: syscall.S_IFREG | 0o644, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	n := metad.Node{Ino: a.Ino}
	h, _, err := e.FS.Open(ctx, n, syscall.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	return h, n
}

func open(t *testing.T, e *testenv.Env, n metad.Node, flags int) *casfs.Handle {
	t.Helper()
	h, _, err := e.FS.Open(ctxT(t), n, flags)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func writeAll(t *testing.T, h *casfs.Handle, data []byte, off int64, piece int) {
	t.Helper()
	for len(data) > 0 {
		k := min(piece, len(data))
		n, err := h.Write(ctxT(t), data[:k], off)
		if err != nil || n != k {
			t.Fatalf("write at %d: %d, %v", off, n, err)
		}
		data, off = data[k:], off+int64(k)
	}
}

func readAll(t *testing.T, h *casfs.Handle, size int) []byte {
	t.Helper()
	out := make([]byte, size+100)
	got := 0
	for got < len(out) {
		n, err := h.Read(ctxT(t), out[got:min(len(out), got+(1<<20))], int64(got))
		if err != nil {
			t.Fatalf("read at %d: %v", got, err)
		}
		if n == 0 {
			break
		}
		got += n
	}
	return out[:got]
}

func mustClose(t *testing.T, h *casfs.Handle) {
	t.Helper()
	if err := h.Flush(ctxT(t)); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if err := h.Release(ctxT(t)); err != nil {
		t.Fatalf("release: %v", err)
	}
}

// content makes test data: random, with zero pages and repeated pages mixed in.
func content(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		end := min(off+4096, size)
		switch r.IntN(4) {
		case 0: // zero page
		case 1: // repeated page
			copy(b[off:end], bytes.Repeat([]byte{0xAB, 0xCD}, 2048))
		default:
			for i := off; i < end; i++ {
				b[i] = byte(r.Uint32())
			}
		}
	}
	return b
}

func TestStreamWriteReadBack(t *testing.T) {
	for _, pol := range []string{"fixed:4096", "fixed:64k", "cdc:16k"} {
		t.Run(pol, func(t *testing.T) {
			e := testenv.New(t, testenv.Options{})
			data := content(1, 5<<20+123)
			h, n := create(t, e, "f", pol)
			writeAll(t, h, data, 0, 128<<10)
			mustClose(t, h)

			plan, err := e.Meta.ReadPlan(ctxT(t), n)
			if err != nil {
				t.Fatal(err)
			}
			if plan.Manifest.Size != uint64(len(data)) || plan.Manifest.Policy.String() != mustPolicy(t, pol).String() {
				t.Fatalf("manifest size %d policy %s", plan.Manifest.Size, plan.Manifest.Policy)
			}
			holes := 0
			for _, x := range plan.Manifest.Extents {
				if x.Hole {
					holes++
				}
			}
			if pol == "fixed:4096" && holes == 0 {
				t.Errorf("no hole extents in a file with zero pages")
			}
			h = open(t, e, n, syscall.O_RDONLY)
			if got := readAll(t, h, len(data)); !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, differs from the %d written", len(got), len(data))
			}
			mustClose(t, h)

			// Same data again under another name: nothing new is uploaded.
			st0, _ := e.FS.Stats(ctxT(t))
			h, _ = create(t, e, "g", pol)
			writeAll(t, h, data, 0, 1<<20)
			mustClose(t, h)
			st1, _ := e.FS.Stats(ctxT(t))
			if up := st1.Mount.ChunksUploaded - st0.Mount.ChunksUploaded; up != 0 {
				t.Errorf("second copy uploaded %d chunks", up)
			}
			if st1.Mount.BytesSkippedDup <= st0.Mount.BytesSkippedDup {
				t.Errorf("second copy skipped no duplicate bytes")
			}
			if st1.StoredRaw != st0.StoredRaw {
				t.Errorf("stored raw grew from %d to %d", st0.StoredRaw, st1.StoredRaw)
			}
		})
	}
}

func mustPolicy(t *testing.T, s string) cas.Policy {
	p, err := cas.ParsePolicy(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRandomOpsModel applies random writes, truncates and flushes through
// casfs and to a byte slice, comparing content after every flush and
// reopen, for fixed and content-defined chunking.
func TestRandomOpsModel(t *testing.T) {
	for _, pol := range []string{"fixed:4096", "cdc:4k"} {
		for seed := uint64(1); seed <= 3; seed++ {
			t.Run(fmt.Sprintf("%s/%d", pol, seed), func(t *testing.T) {
				e := testenv.New(t, testenv.Options{})
				r := rand.New(rand.NewPCG(seed, 99))
				h, n := create(t, e, "f", pol)
				var model []byte
				for step := 0; step < 60; step++ {
					op := r.IntN(10)
					t.Logf("step %d op %d len %d", step, op, len(model))
					switch {
					case op < 6: // write
						size := 1 + r.IntN(64<<10)
						off := r.IntN(len(model) + 32<<10)
						if r.IntN(3) == 0 {
							off = len(model) // append
						}
						data := content(r.Uint64(), size)
						writeAll(t, h, data, int64(off), 1+r.IntN(70000))
						if off+size > len(model) {
							model = append(model, make([]byte, off+size-len(model))...)
						}
						copy(model[off:], data)
					case op < 8: // truncate
						size := r.IntN(len(model) + 100<<10)
						if r.IntN(4) == 0 {
							size = 0
						}
						a, err := e.FS.SetAttr(ctxT(t), n, metad.SetAttrRequest{Size: ptr(uint64(size))})
						if err != nil {
							t.Fatalf("truncate: %v", err)
						}
						if a.Size != uint64(size) {
							t.Fatalf("truncate to %d reports size %d", size, a.Size)
						}
						if size < len(model) {
							model = model[:size]
						} else {
							model = append(model, make([]byte, size-len(model))...)
						}
					case op < 9: // read back through the open handle
						if got := readAll(t, h, len(model)); !bytes.Equal(got, model) {
							t.Fatalf("step %d: open-file read differs (got %d bytes, want %d)", step, len(got), len(model))
						}
					default: // close and reopen
						mustClose(t, h)
						h = open(t, e, n, syscall.O_RDWR)
						if got := readAll(t, h, len(model)); !bytes.Equal(got, model) {
							t.Fatalf("step %d: reopened read differs (got %d bytes, want %d) at %d", step, len(got), len(model), firstDiff(got, model))
						}
					}
					a, err := e.FS.GetAttr(ctxT(t), n)
					if err != nil || a.Size != uint64(len(model)) {
						t.Fatalf("step %d: size %d (%v), want %d", step, a.Size, err, len(model))
					}
				}
				mustClose(t, h)
				h = open(t, e, n, syscall.O_RDONLY)
				if got := readAll(t, h, len(model)); !bytes.Equal(got, model) {
					t.Fatalf("final read differs")
				}
				mustClose(t, h)
			})
		}
	}
}

func ptr[T any](v T) *T { return &v }

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestRewriteReChunksOnlyChangedRegion overwrites 1 MiB in the middle of a
// 16 MiB file and checks that only chunks around it were uploaded.
func TestRewriteReChunksOnlyChangedRegion(t *testing.T) {
	for _, pol := range []string{"fixed:64k", "cdc:16k"} {
		t.Run(pol, func(t *testing.T) {
			e := testenv.New(t, testenv.Options{})
			data := content(5, 16<<20)
			for i := range data { // no zero pages: every chunk is real
				data[i] |= 1
			}
			h, n := create(t, e, "f", pol)
			writeAll(t, h, data, 0, 1<<20)
			mustClose(t, h)
			st0, _ := e.FS.Stats(ctxT(t))

			patch := content(6, 1<<20)
			for i := range patch {
				patch[i] |= 1
			}
			h = open(t, e, n, syscall.O_RDWR)
			writeAll(t, h, patch, 8<<20+777, 128<<10)
			mustClose(t, h)
			copy(data[8<<20+777:], patch)
			st1, _ := e.FS.Stats(ctxT(t))
			up := st1.Mount.BytesUploadedRaw - st0.Mount.BytesUploadedRaw
			if up < 1<<20 || up > 1<<20+512<<10 {
				t.Errorf("rewrite of 1 MiB uploaded %d raw bytes", up)
			}
			if w := st1.Mount.BytesWritten - st0.Mount.BytesWritten; w > 1<<20+512<<10 {
				t.Errorf("rewrite of 1 MiB re-chunked %d bytes", w)
			}
			h = open(t, e, n, syscall.O_RDONLY)
			if got := readAll(t, h, len(data)); !bytes.Equal(got, data) {
				t.Fatal("content differs after rewrite")
			}
			mustClose(t, h)
		})
	}
}

func TestSparseExtendIsCheap(t *testing.T) {
	e := testenv.New(t, testenv.Options{})
	h, n := create(t, e, "sparse", "")
	mustClose(t, h)
	const size = 64 << 30
	start := time.Now()
	if _, err := e.FS.SetAttr(ctxT(t), n, metad.SetAttrRequest{Size: ptr(uint64(size))}); err != nil {
		t.Fatal(err)
	}
	plan, err := e.Meta.ReadPlan(ctxT(t), n)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Manifest.Size != size {
		t.Fatalf("size %d", plan.Manifest.Size)
	}
	st, _ := e.FS.Stats(ctxT(t))
	if st.Mount.BytesWritten != 0 || st.Mount.ChunksUploaded != 0 {
		t.Errorf("extending by truncate chunked %d bytes, uploaded %d chunks", st.Mount.BytesWritten, st.Mount.ChunksUploaded)
	}
	t.Logf("64 GiB sparse extension took %v", time.Since(start))
}

func TestCorruptChunkIsEIONotWrongData(t *testing.T) {
	e := testenv.New(t, testenv.Options{})
	data := content(3, 1<<20)
	h, n := create(t, e, "f", "fixed:64k")
	writeAll(t, h, data, 0, 1<<20)
	mustClose(t, h)
	e.Blocks.Corrupt()
	h = open(t, e, n, syscall.O_RDONLY)
	defer h.Release(ctxT(t))
	buf := make([]byte, 1<<20)
	_, err := h.Read(ctxT(t), buf, 0)
	if !errors.Is(err, cas.ErrHashMismatch) && !errors.Is(err, cas.ErrCorruptChunk) {
		t.Fatalf("read of corrupt chunks: %v, want a hash mismatch or corrupt chunk error", err)
	}
}

func TestUploadFailureIsReportedAndNothingCommitted(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"disk full", fmt.Errorf("badger: %w", syscall.ENOSPC), syscall.ENOSPC},
		{"store broken", errors.New("blockd exploded"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testenv.New(t, testenv.Options{FS: casfs.Config{RetryDeadline: 200 * time.Millisecond}})
			old := content(8, 256<<10)
			h, n := create(t, e, "f", "fixed:4096")
			writeAll(t, h, old, 0, 1<<20)
			mustClose(t, h)

			e.Blocks.FailPut(tc.err)
			h = open(t, e, n, syscall.O_RDWR)
			if _, err := e.FS.SetAttr(ctxT(t), n, metad.SetAttrRequest{Size: ptr(uint64(0))}); err != nil {
				t.Fatal(err)
			}
			data := content(9, 3<<20)
			var werr error
			for off := 0; off < len(data) && werr == nil; off += 1 << 20 {
				_, werr = h.Write(ctxT(t), data[off:off+1<<20], int64(off))
			}
			ferr := h.Flush(ctxT(t))
			err := errors.Join(werr, ferr)
			if ferr == nil {
				t.Fatal("flush succeeded although every upload failed")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v does not wrap %v", err, tc.want)
			}
			// Before the failed handle is released, the attributes are the
			// committed file's too, not the failed writes' (a reader given
			// their size would read the committed bytes padded with zeros).
			if a, err := e.FS.GetAttr(ctxT(t), n); err != nil || a.Size != uint64(len(old)) {
				t.Errorf("size after the failed flush: %d, %v; want the committed %d", a.Size, err, len(old))
			}
			if h.Release(ctxT(t)) == nil {
				t.Error("release after a failed flush reported no error")
			}
			e.Blocks.FailPut(nil)
			// The committed content is still the old file, whole.
			h = open(t, e, n, syscall.O_RDONLY)
			if got := readAll(t, h, len(old)); !bytes.Equal(got, old) {
				t.Fatalf("after a failed write the file reads %d bytes, not the old %d", len(got), len(old))
			}
			mustClose(t, h)
		})
	}
}

func TestSnapshotReadOnly(t *testing.T) {
	e := testenv.New(t, testenv.Options{})
	data := content(11, 300<<10)
	h, n := create(t, e, "f", "")
	writeAll(t, h, data, 0, 1<<20)
	// Not closed yet: the snapshot must still include it (Snapshot syncs).
	s, err := e.FS.Snapshot(ctxT(t), metad.RootIno, "s1")
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, h, []byte("changed after snapshot"), 0, 100)
	mustClose(t, h)
	sn := metad.Node{Snap: s.Root.Snap, Ino: n.Ino}
	if _, _, err := e.FS.Open(ctxT(t), sn, syscall.O_RDWR); !errors.Is(err, metad.ErrReadOnly) {
		t.Fatalf("open for write in snapshot: %v", err)
	}
	if _, err := e.FS.SetAttr(ctxT(t), sn, metad.SetAttrRequest{Size: ptr(uint64(0))}); !errors.Is(err, metad.ErrReadOnly) {
		t.Fatalf("truncate in snapshot: %v", err)
	}
	h = open(t, e, sn, syscall.O_RDONLY)
	if got := readAll(t, h, len(data)); !bytes.Equal(got, data) {
		t.Fatal("snapshot content differs from the content at snapshot time")
	}
	mustClose(t, h)
}

func TestConfigValidation(t *testing.T) {
	if _, err := casfs.New(casfs.Config{}); !errors.Is(err, casfs.ErrConfig) {
		t.Fatalf("empty config: %v", err)
	}
	e := testenv.New(t, testenv.Options{})
	_, err := casfs.New(casfs.Config{Meta: e.Meta, Transport: casfs.StoreTransport{Store: e.Blocks}, StagingDir: t.TempDir(), InFlightBytes: 1})
	if !errors.Is(err, casfs.ErrConfig) {
		t.Fatalf("tiny InFlightBytes: %v", err)
	}
}

// TestTransientOutageIsRetried: a block store that is unavailable for a
// moment (shorter than RetryDeadline) costs time, not data; one that stays
// down past the deadline makes the flush fail.
func TestTransientOutageIsRetried(t *testing.T) {
	e := testenv.New(t, testenv.Options{FS: casfs.Config{RetryDeadline: 2 * time.Second}})
	data := content(12, 2<<20)
	unavailable := fmt.Errorf("blockd: %w", metad.ErrUnavailable)

	e.Blocks.FailPut(unavailable)
	go func() { time.Sleep(300 * time.Millisecond); e.Blocks.FailPut(nil) }()
	h, n := create(t, e, "f", "fixed:64k")
	writeAll(t, h, data, 0, 1<<20)
	mustClose(t, h)
	h = open(t, e, n, syscall.O_RDONLY)
	if got := readAll(t, h, len(data)); !bytes.Equal(got, data) {
		t.Fatal("content differs after a retried outage")
	}
	mustClose(t, h)

	e.Blocks.FailPut(unavailable)
	h, _ = create(t, e, "g", "fixed:64k")
	writeAll(t, h, content(13, 1<<20), 0, 1<<20)
	if err := h.Flush(ctxT(t)); !errors.Is(err, metad.ErrUnavailable) {
		t.Fatalf("flush during a long outage: %v", err)
	}
	h.Release(ctxT(t))
}

// TestDiskCache: chunks read once are served from the local disk cache by a
// later FS (a remount) even when the block store is down; a corrupted cache
// file is detected, dropped and fetched again; the cache stays within its
// bound.
func TestDiskCache(t *testing.T) {
	cacheDir := t.TempDir()
	e := testenv.New(t, testenv.Options{FS: casfs.Config{DiskCacheDir: cacheDir, RetryDeadline: 100 * time.Millisecond}})
	data := content(14, 2<<20)
	h, n := create(t, e, "f", "fixed:64k")
	writeAll(t, h, data, 0, 1<<20)
	mustClose(t, h)
	h = open(t, e, n, syscall.O_RDONLY)
	readAll(t, h, len(data))
	mustClose(t, h)

	// A second FS over the same stores and cache directory, block store down.
	e.Blocks.FailGet(fmt.Errorf("blockd down: %w", metad.ErrUnavailable))
	e2 := testenv.New(t, testenv.Options{Meta: e.Meta, Blocks: e.Blocks, FS: casfs.Config{DiskCacheDir: cacheDir, RetryDeadline: 100 * time.Millisecond}})
	h = open(t, e2, n, syscall.O_RDONLY)
	if got := readAll(t, h, len(data)); !bytes.Equal(got, data) {
		t.Fatal("disk-cached read differs")
	}
	mustClose(t, h)
	st, _ := e2.FS.Stats(ctxT(t))
	if st.Mount.DiskCacheHits == 0 || st.Mount.ChunksFetched != 0 {
		t.Errorf("disk cache hits %d, fetched %d", st.Mount.DiskCacheHits, st.Mount.ChunksFetched)
	}

	// Corrupt every cached file: a third FS must notice and refetch.
	err := filepath.WalkDir(cacheDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			b[len(b)-1] ^= 1
			err = os.WriteFile(p, b, 0o600)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Blocks.FailGet(nil)
	e3 := testenv.New(t, testenv.Options{Meta: e.Meta, Blocks: e.Blocks, FS: casfs.Config{DiskCacheDir: cacheDir, DiskCacheBytes: 1 << 20}})
	h = open(t, e3, n, syscall.O_RDONLY)
	if got := readAll(t, h, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read with a corrupted disk cache differs")
	}
	mustClose(t, h)
	st, _ = e3.FS.Stats(ctxT(t))
	if st.Mount.DiskCacheHits != 0 || st.Mount.ChunksFetched == 0 {
		t.Errorf("corrupt cache: hits %d, fetched %d", st.Mount.DiskCacheHits, st.Mount.ChunksFetched)
	}
	if st.Mount.DiskCacheBytes > 1<<20 {
		t.Errorf("disk cache holds %d bytes over its 1 MiB bound", st.Mount.DiskCacheBytes)
	}
}

// A new file written at increasing offsets with gaps (a sparse copy), or
// sized with ftruncate first and then filled in order (QEMU's mapped-ram),
// streams: nothing goes through the staging file, the gaps are holes, and
// the content reads back with zeros in them. A write behind the stream
// still works (it commits the stream and stages).
func TestSparseSequentialWritesStream(t *testing.T) {
	for _, pol := range []string{"fixed:4096", "fixed:64k", "fixed:4m", "cdc:16k"} {
		t.Run(pol, func(t *testing.T) {
			e := testenv.New(t, testenv.Options{})
			ctx := ctxT(t)
			type piece struct{ off, n int }
			for _, tc := range []struct {
				name     string
				presize  int // ftruncate to this size before writing
				pieces   []piece
				finalLen int // ftruncate at the end (0: none)
			}{
				{"gaps", 0, []piece{{5000, 70000}, {200 << 10, 3 << 20}, {12 << 20, 100}, {12<<20 + 100, 64 << 10}}, 20<<20 + 3},
				{"presized", 16 << 20, []piece{{0, 1 << 20}, {4 << 20, 8192}, {9<<20 + 1, 1 << 20}}, 0},
			} {
				t.Run(tc.name, func(t *testing.T) {
					st0, _ := e.FS.Stats(ctx)
					h, n := create(t, e, tc.name, pol)
					model := make([]byte, tc.presize)
					if tc.presize > 0 {
						if _, err := e.FS.SetAttr(ctx, n, metad.SetAttrRequest{Size: ptr(uint64(tc.presize))}); err != nil {
							t.Fatal(err)
						}
					}
					for i, p := range tc.pieces {
						data := content(uint64(10+i), p.n)
						writeAll(t, h, data, int64(p.off), 1<<20)
						if p.off+p.n > len(model) {
							model = append(model, make([]byte, p.off+p.n-len(model))...)
						}
						copy(model[p.off:], data)
					}
					if tc.finalLen > 0 {
						if _, err := e.FS.SetAttr(ctx, n, metad.SetAttrRequest{Size: ptr(uint64(tc.finalLen))}); err != nil {
							t.Fatal(err)
						}
						model = append(model, make([]byte, tc.finalLen-len(model))...)
					}
					mustClose(t, h)
					st1, _ := e.FS.Stats(ctx)
					if d := st1.Mount.BytesStaged - st0.Mount.BytesStaged; d != 0 {
						t.Errorf("%d bytes went through the staging file", d)
					}
					if st1.Mount.HoleBytesWritten-st0.Mount.HoleBytesWritten < 1<<20 {
						t.Errorf("only %d hole bytes for megabytes of gaps", st1.Mount.HoleBytesWritten-st0.Mount.HoleBytesWritten)
					}
					h = open(t, e, n, syscall.O_RDONLY)
					if got := readAll(t, h, len(model)); !bytes.Equal(got, model) {
						t.Fatalf("read back %d bytes, want %d, first difference at %d", len(got), len(model), firstDiff(got, model))
					}
					mustClose(t, h)
				})
			}

			// Behind the stream: staged, and still right.
			st0, _ := e.FS.Stats(ctx)
			h, n := create(t, e, "back", pol)
			a, b := content(20, 300<<10), content(21, 5000)
			writeAll(t, h, a, 1<<20, 64<<10)
			writeAll(t, h, b, 100, 5000)
			mustClose(t, h)
			st1, _ := e.FS.Stats(ctx)
			if st1.Mount.BytesStaged-st0.Mount.BytesStaged != 5000 {
				t.Errorf("%d bytes staged, want the 5000 written behind the stream", st1.Mount.BytesStaged-st0.Mount.BytesStaged)
			}
			model := make([]byte, 1<<20+len(a))
			copy(model[1<<20:], a)
			copy(model[100:], b)
			h = open(t, e, n, syscall.O_RDONLY)
			if got := readAll(t, h, len(model)); !bytes.Equal(got, model) {
				t.Fatalf("back: first difference at %d", firstDiff(got, model))
			}
			mustClose(t, h)
		})
	}
}

// A file written from offset 0 and then patched behind its end before it
// is closed (a header filled in last: qemu-img, archivers, linkers) keeps
// the patch. The patch ends the stream (its content is committed) and is
// staged on top; it used to be dropped at close, because the new write
// state did not count the patch as a change.
func TestWriteBehindStreamIsKept(t *testing.T) {
	for _, pol := range []string{"fixed:4096", "cdc:16k"} {
		t.Run(pol, func(t *testing.T) {
			e := testenv.New(t, testenv.Options{})
			h, n := create(t, e, "f", pol)
			model := content(30, 3<<20+5)
			writeAll(t, h, model, 0, 1<<20)
			hdr := content(31, 512)
			writeAll(t, h, hdr, 16, 512)
			copy(model[16:], hdr)
			mustClose(t, h)
			h = open(t, e, n, syscall.O_RDONLY)
			if got := readAll(t, h, len(model)); !bytes.Equal(got, model) {
				t.Fatalf("after close: %d bytes, first difference at %d", len(got), firstDiff(got, model))
			}
			mustClose(t, h)
		})
	}
}
