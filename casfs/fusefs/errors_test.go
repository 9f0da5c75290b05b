package fusefs_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"stasis/casfs"
	"stasis/casfs/internal/testenv"
)

// TestDiskFullIsENOSPC: a block store that is full makes close() fail with
// ENOSPC, and the file keeps its last committed content.
func TestDiskFullIsENOSPC(t *testing.T) {
	e, mnt := mount(t, testenv.Options{FS: casfs.Config{RetryDeadline: 200 * time.Millisecond}})
	name := filepath.Join(mnt, "f")
	old := randBytes(1, 300<<10)
	if err := os.WriteFile(name, old, 0o644); err != nil {
		t.Fatal(err)
	}
	e.Blocks.FailPut(fmt.Errorf("badger: write: %w", syscall.ENOSPC))
	err := os.WriteFile(name, randBytes(2, 2<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing to a full store: %v, want ENOSPC", err)
	}
	e.Blocks.FailPut(nil)
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	// O_TRUNC committed nothing; the failed close left the previous content
	// or the truncation, never a partial new file.
	if len(got) != 0 && len(got) != len(old) {
		t.Fatalf("after a failed write the file has %d bytes", len(got))
	}
}

// TestCorruptChunkIsEIO: a chunk whose bytes do not match its hash is an
// I/O error, never wrong data.
func TestCorruptChunkIsEIO(t *testing.T) {
	e, mnt := mount(t, testenv.Options{})
	name := filepath.Join(mnt, "f")
	if err := os.WriteFile(name, randBytes(3, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	e.Blocks.Corrupt()
	// A fresh mount of the same stores, so neither the chunk cache nor the
	// kernel's page cache holds the good bytes.
	e2 := testenv.New(t, testenv.Options{Meta: e.Meta, Blocks: e.Blocks})
	mnt2 := e2.Mount(t, fusefsOptions())
	_, err := os.ReadFile(filepath.Join(mnt2, "f"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("reading corrupt chunks: %v, want EIO", err)
	}
}

// TestCloseIgnoresInterrupts: a signal delivered to the thread blocked in
// close(2) makes the kernel send FUSE_INTERRUPT. close is never retried (Go
// does not, and must not), so casfs has to finish the commit instead of
// failing it with EINTR. The Go runtime's own preemption signal does this to
// any slow close; here the test sends SIGUSR1 to the closing thread every
// millisecond while blockd is slow.
func TestCloseIgnoresInterrupts(t *testing.T) {
	e, mnt := mount(t, testenv.Options{})
	sig := make(chan os.Signal, 1024)
	signal.Notify(sig, syscall.SIGUSR1)
	defer signal.Stop(sig)

	for i := 0; i < 3; i++ {
		name := filepath.Join(mnt, fmt.Sprintf("f%d", i))
		data := randBytes(uint64(10+i), 3<<20)
		f, err := os.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		e.Blocks.SetPutDelay(150 * time.Millisecond)
		tids := make(chan int, 1)
		done := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tids <- unix.Gettid()
			done <- f.Close()
		}()
		tid := <-tids
		sent := 0
		var closeErr error
	wait:
		for {
			select {
			case closeErr = <-done:
				break wait
			default:
				unix.Tgkill(os.Getpid(), tid, syscall.SIGUSR1)
				sent++
				time.Sleep(time.Millisecond)
			}
		}
		e.Blocks.SetPutDelay(0)
		if closeErr != nil {
			t.Fatalf("close with %d signals to the closing thread: %v", sent, closeErr)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: read back %d bytes that differ from the %d written", name, len(got), len(data))
		}
	}
}
