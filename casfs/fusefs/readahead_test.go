package fusefs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"stasis/casfs/fusefs"
	"stasis/casfs/internal/testenv"
	"stasis/internal/syncbuf"
)

// kernelReadAhead returns the read-ahead window (KiB) of the mount at mnt.
func kernelReadAhead(t *testing.T, mnt string) int {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fusefs.KernelReadAheadFileForTest(st.Dev))
	if err != nil {
		t.Fatal(err)
	}
	kib, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return kib
}

// TestKernelReadAhead: a mount's read-ahead window is the configured one
// (by default DefaultKernelReadAheadKiB, not FUSE's 128 KiB); a negative
// value keeps the kernel's.
func TestKernelReadAhead(t *testing.T) {
	e := testenv.New(t, testenv.Options{})
	if got := kernelReadAhead(t, e.Mount(t, fusefs.Options{})); got != fusefs.DefaultKernelReadAheadKiB {
		t.Errorf("default mount: read_ahead_kb %d, want %d", got, fusefs.DefaultKernelReadAheadKiB)
	}
	if got := kernelReadAhead(t, e.Mount(t, fusefs.Options{KernelReadAheadKiB: 768})); got != 768 {
		t.Errorf("KernelReadAheadKiB 768: read_ahead_kb %d", got)
	}
	if got := kernelReadAhead(t, e.Mount(t, fusefs.Options{KernelReadAheadKiB: -1})); got > 1024 {
		t.Errorf("KernelReadAheadKiB -1: read_ahead_kb %d, want the kernel's (at most the 1 MiB casfs announces)", got)
	}
}

// TestLargeReadsTryNoSplice: go-fuse's log reaches the mount's logger, and
// 1 MiB reads (the kernel's requests with a large read-ahead window) do not
// make go-fuse try to splice a reply from memory, which failed and logged
// on every read (its pipe cannot grow past 1 MiB).
func TestLargeReadsTryNoSplice(t *testing.T) {
	var logs syncbuf.Buffer
	e := testenv.New(t, testenv.Options{})
	mnt := e.Mount(t, fusefs.Options{Logger: testenv.LoggerTo(&logs), Debug: true})
	data := randBytes(7, 8<<20)
	name := filepath.Join(mnt, "f")
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	out := logs.String()
	if !strings.Contains(out, "READ") {
		t.Fatalf("go-fuse's request trace did not reach the mount's logger:\n%.2000s", out)
	}
	if i := strings.Index(out, "trySplice"); i >= 0 {
		t.Fatalf("go-fuse tried to splice a reply: %.300s", out[i:])
	}
}
