package fusefs_test

import (
	"bytes"
	"context"
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

	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
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

// slowMeta delays namespace mutations, lookups, attributes, directory
// listings and read plans and, like an HTTP client, gives up
// when its context is cancelled, so an interrupted FUSE request that passed
// its cancellation on would fail.
type slowMeta struct {
	metad.API
	delay time.Duration
}

func (m slowMeta) wait(ctx context.Context) error {
	select {
	case <-time.After(m.delay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m slowMeta) Create(ctx context.Context, req metad.CreateRequest) (metad.Attr, error) {
	if err := m.wait(ctx); err != nil {
		return metad.Attr{}, err
	}
	return m.API.Create(ctx, req)
}

func (m slowMeta) SetXattr(ctx context.Context, ino metad.Ino, name string, value []byte, flags uint32) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	return m.API.SetXattr(ctx, ino, name, value, flags)
}

func (m slowMeta) Rename(ctx context.Context, dir metad.Ino, name string, newDir metad.Ino, newName string, flags metad.RenameFlags) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	return m.API.Rename(ctx, dir, name, newDir, newName, flags)
}

func (m slowMeta) Lookup(ctx context.Context, parent metad.Node, name string) (metad.Attr, error) {
	if err := m.wait(ctx); err != nil {
		return metad.Attr{}, err
	}
	return m.API.Lookup(ctx, parent, name)
}

func (m slowMeta) GetAttr(ctx context.Context, n metad.Node) (metad.Attr, error) {
	if err := m.wait(ctx); err != nil {
		return metad.Attr{}, err
	}
	return m.API.GetAttr(ctx, n)
}

func (m slowMeta) ReadDir(ctx context.Context, n metad.Node, after string, limit int) ([]metad.DirEntry, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}
	return m.API.ReadDir(ctx, n, after, limit)
}

func (m slowMeta) ReadPlan(ctx context.Context, n metad.Node) (metad.ReadPlan, error) {
	if err := m.wait(ctx); err != nil {
		return metad.ReadPlan{}, err
	}
	return m.API.ReadPlan(ctx, n)
}

func (m slowMeta) Unlink(ctx context.Context, dir metad.Ino, name string) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	return m.API.Unlink(ctx, dir, name)
}

// TestOperationsIgnoreInterrupts: signals to the thread blocked in mkdir,
// setxattr, rename, unlink, stat, open, read or readdir (FUSE_INTERRUPT) do
// not turn them into EINTR — the bench saw setxattr fail so, and CI saw
// rename fail when the kernel's lookup of the new name was interrupted —
// and each mutation takes effect once.
func TestOperationsIgnoreInterrupts(t *testing.T) {
	blocks := testenv.NewBlocks()
	svc := testenv.OpenMeta(t, t.TempDir(), blocks, cas.Policy{})
	_, mnt := mount(t, testenv.Options{Blocks: blocks, Meta: slowMeta{API: svc, delay: 60 * time.Millisecond}})
	sig := make(chan os.Signal, 1024)
	signal.Notify(sig, syscall.SIGUSR1)
	defer signal.Stop(sig)

	// underSignals runs op on a locked thread and sends that thread
	// SIGUSR1 every millisecond until op returns.
	underSignals := func(what string, op func() error) {
		t.Helper()
		tids := make(chan int, 1)
		done := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tids <- unix.Gettid()
			done <- op()
		}()
		tid := <-tids
		sent := 0
		deadline := time.Now().Add(20 * time.Second)
		for {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not return within 20 s under signals", what)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s with %d signals to its thread: %v", what, sent, err)
				}
				if sent == 0 {
					t.Fatalf("%s: no signal was sent while it ran", what)
				}
				return
			default:
				unix.Tgkill(os.Getpid(), tid, syscall.SIGUSR1)
				sent++
				time.Sleep(time.Millisecond)
			}
		}
	}
	d, f, g := filepath.Join(mnt, "d"), filepath.Join(mnt, "d", "f"), filepath.Join(mnt, "d", "g")
	// unix calls, not os: os retries EINTR, which would loop under signals.
	underSignals("mkdir", func() error { return unix.Mkdir(d, 0o755) })
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	underSignals("setxattr", func() error { return unix.Setxattr(f, "user.k", []byte("v"), 0) })
	underSignals("rename", func() error { return unix.Rename(f, g) })
	var st unix.Stat_t
	underSignals("stat", func() error { return unix.Stat(g, &st) })
	underSignals("open+read", func() error {
		fd, err := unix.Open(g, unix.O_RDONLY, 0)
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		defer unix.Close(fd)
		b := make([]byte, 8)
		if n, err := unix.Read(fd, b); err != nil || string(b[:n]) != "x" {
			return fmt.Errorf("read %q: %v", b[:n], err)
		}
		return nil
	})
	underSignals("readdir", func() error {
		fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return fmt.Errorf("open dir: %w", err)
		}
		defer unix.Close(fd)
		_, err = unix.Getdents(fd, make([]byte, 4096))
		return err
	})
	buf := make([]byte, 8)
	if n, err := unix.Getxattr(g, "user.k", buf); err != nil || string(buf[:n]) != "v" {
		t.Fatalf("xattr after rename: %q, %v", buf[:n], err)
	}
	underSignals("unlink", func() error { return unix.Unlink(g) })
	if _, err := os.Stat(g); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after unlink: %v", err)
	}
}
