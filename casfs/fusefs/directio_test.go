package fusefs_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"stasis/casfs/fusefs"
	"stasis/casfs/internal/testenv"
)

// residentPages counts the pages of m that are in the kernel's page cache.
func residentPages(m []byte) (int, error) {
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return 0, fmt.Errorf("mincore: %w", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n, nil
}

// mapHelperEnv makes the test binary a mapping helper (TestMain, runMapHelper).
const mapHelperEnv = "FUSEFS_TEST_MAP_HELPER"

// TestMain runs the tests, or, in a child process that mapFile started,
// the mapping helper.
func TestMain(m *testing.M) {
	if os.Getenv(mapHelperEnv) != "" {
		if err := runMapHelper(os.Getenv("FILE"), os.Getenv("WANT1"), os.Getenv("WANT2")); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runMapHelper maps file (a casfs file), checks that the mapping shows the
// content of want1 (a local file), prints the resident page count, waits
// for a line on stdin, then prints the resident page count again and
// whether the mapping shows want2.
//
// Touching a mapping of casfs in the process that serves the mount can
// deadlock it: a thread in a page fault waiting for the FUSE server is,
// for Go, a running goroutine that cannot be stopped, so a garbage
// collection's stop-the-world waits for it while it waits for the server
// goroutines the stop-the-world stopped (seen in CI: TestDirectWrites hung,
// and go test's own timeout, a goroutine too, never fired). A child
// process faults the pages instead.
func runMapHelper(file, want1, want2 string) error {
	w1, err := os.ReadFile(want1)
	if err != nil {
		return err
	}
	w2, err := os.ReadFile(want2)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, len(w1), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(m)
	if !bytes.Equal(m, w1) { // faults every page in
		return errors.New("mapping does not show the file")
	}
	n, err := residentPages(m)
	if err != nil {
		return err
	}
	fmt.Println(n)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return err
	}
	if n, err = residentPages(m); err != nil {
		return err
	}
	fmt.Println(n, bytes.Equal(m, w2))
	return nil
}

// mapFile starts runMapHelper on file in a child process; first and then are the contents the
// mapping must show before and after the caller's change.
type mapChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func mapFile(t *testing.T, file string, first, then []byte) *mapChild {
	t.Helper()
	dir := t.TempDir()
	w1, w2 := filepath.Join(dir, "want1"), filepath.Join(dir, "want2")
	if err := os.WriteFile(w1, first, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w2, then, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), mapHelperEnv+"=1", "FILE="+file, "WANT1="+w1, "WANT2="+w2)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return &mapChild{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
}

// line reads the helper's next line, failing the test on an error line or
// after 30 s.
func (c *mapChild) line(t *testing.T) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		if err != nil {
			s = "error: helper output: " + err.Error()
		}
		got <- strings.TrimSpace(s)
	}()
	select {
	case s := <-got:
		if strings.HasPrefix(s, "error:") {
			t.Fatal("map helper: " + s)
		}
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("map helper silent for 30 s")
		return ""
	}
}

// TestDirectWrites checks that writes of a write-only handle bypass the
// kernel page cache by default (and go through it with CachedWrites), and
// that a reader holding cached pages and a shared mapping of the same file
// (held by a child process: see runMapHelper) sees the new bytes either
// way.
func TestDirectWrites(t *testing.T) {
	const size = 1 << 20
	pages := size / os.Getpagesize()
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
			child := mapFile(t, p, old, fresh)
			if n := child.line(t); n != strconv.Itoa(pages) {
				t.Fatalf("%s pages resident after reading, want all %d", n, pages)
			}

			w, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteAt(fresh, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(child.stdin, "written\n"); err != nil {
				t.Fatal(err)
			}
			var n int
			var equal bool
			if _, err := fmt.Sscan(child.line(t), &n, &equal); err != nil {
				t.Fatal(err)
			}
			if tc.resident && n != pages || !tc.resident && n != 0 {
				t.Errorf("%d pages resident after the write; want resident=%v", n, tc.resident)
			}
			if !equal {
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
