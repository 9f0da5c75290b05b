package fusefs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"stasis/casfs/fusefs"
	"stasis/casfs/internal/testenv"
)

// residentPages counts the pages of m that are in the kernel's page cache.
func residentPages(t *testing.T, m []byte) int {
	t.Helper()
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		t.Fatal("mincore:", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestDirectWrites checks that writes of a write-only handle bypass the
// kernel page cache by default (and go through it with CachedWrites), and
// that a reader holding cached pages and a shared mapping of the same file
// sees the new bytes either way.
func TestDirectWrites(t *testing.T) {
	const size = 1 << 20
	for _, tc := range []struct {
		name     string
		cached   bool
		resident bool // written pages in the page cache after the write
	}{{"direct", false, false}, {"cached", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := testenv.New(t, testenv.Options{})
			mnt := e.Mount(t, fusefs.Options{CachedWrites: tc.cached})
			p := filepath.Join(mnt, "f")
			old, fresh := randBytes(1, size), randBytes(2, size)
			if err := os.WriteFile(p, old, 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			m, err := unix.Mmap(int(r.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Munmap(m)
			if !bytes.Equal(m, old) { // faults every page in
				t.Fatal("mapping does not show the file")
			}
			if n := residentPages(t, m); n != size/os.Getpagesize() {
				t.Fatalf("%d pages resident after reading, want all", n)
			}

			w, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteAt(fresh, 0); err != nil {
				t.Fatal(err)
			}
			n := residentPages(t, m)
			if tc.resident && n != size/os.Getpagesize() || !tc.resident && n != 0 {
				t.Errorf("%d pages resident after the write; want resident=%v", n, tc.resident)
			}
			if !bytes.Equal(m, fresh) {
				t.Error("shared mapping shows stale bytes after the write")
			}
			got := make([]byte, size)
			if _, err := r.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, fresh) {
				t.Error("cached reader sees stale bytes after the write")
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, fresh) {
				t.Fatalf("after close: %v, equal=%v", err, bytes.Equal(got, fresh))
			}
		})
	}
}

// What cp --sparse and header-last writers do, through the mount: data
// written at increasing offsets with holes skipped streams (nothing is
// staged), a patch behind the end before close is kept, and a remount
// reads both back.
func TestSparseAndPatchedWritesThroughMount(t *testing.T) {
	metaDir, blocks := t.TempDir(), testenv.NewBlocks()
	const size = 8<<20 + 123
	model := make([]byte, size)
	t.Run("write", func(t *testing.T) {
		_, mnt := mount(t, testenv.Options{MetaDir: metaDir, Blocks: blocks})
		f, err := os.OpenFile(filepath.Join(mnt, "sparse"), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		for i, off := range []int{64 << 10, 1 << 20, 5<<20 + 7} {
			data := randBytes(uint64(i+3), 300<<10)
			if _, err := f.WriteAt(data, int64(off)); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], data)
		}
		if err := f.Truncate(size); err != nil { // the trailing hole, as cp does
			t.Fatal(err)
		}
		before := readStats(t, mnt).Mount.BytesStaged
		if before != 0 {
			t.Errorf("%d bytes staged by writes at increasing offsets", before)
		}
		hdr := randBytes(9, 100)
		if _, err := f.WriteAt(hdr, 10); err != nil {
			t.Fatal(err)
		}
		copy(model[10:], hdr)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if got := readStats(t, mnt).Mount.BytesStaged; got != 100 {
			t.Errorf("%d bytes staged, want the 100-byte patch", got)
		}
	})
	_, mnt := mount(t, testenv.Options{MetaDir: metaDir, Blocks: blocks})
	got, err := os.ReadFile(filepath.Join(mnt, "sparse"))
	if err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after remount: %d bytes (%v), equal=%v", len(got), err, bytes.Equal(got, model))
	}
}
