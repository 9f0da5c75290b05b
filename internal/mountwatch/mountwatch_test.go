package mountwatch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// stuckFile is a file whose reads never return (until the test ends).
type stuckFile struct {
	fs.Inode
	release chan struct{}
}

var _ = (fs.NodeOpener)((*stuckFile)(nil))
var _ = (fs.NodeReader)((*stuckFile)(nil))

func (f *stuckFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *stuckFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	<-f.release
	return fuse.ReadResultData(nil), 0
}

// mountStuck mounts a file system with one file, "stuck", whose reads hang.
func mountStuck(t *testing.T) string {
	t.Helper()
	mnt := t.TempDir()
	release := make(chan struct{})
	root := &fs.Inode{}
	srv, err := fs.Mount(mnt, root, &fs.Options{
		MountOptions: fuse.MountOptions{DirectMount: true, FsName: "mountwatch-test", Name: "mountwatch"},
		OnAdd: func(ctx context.Context) {
			root.AddChild("stuck", root.NewPersistentInode(ctx, &stuckFile{release: release}, fs.StableAttr{}), false)
		},
	})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		close(release)
		Abort(mnt)
		srv.Wait()
	})
	return mnt
}

// aborted reports whether err is what a request on an aborted FUSE
// connection fails with (ECONNABORTED when it was waiting for its answer,
// ENOTCONN when it is sent afterwards).
func aborted(err error) bool {
	return errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOTCONN)
}

// readResult reads mnt/stuck in the background.
func readResult(mnt string) <-chan error {
	done := make(chan error, 1)
	go func() {
		f, err := os.Open(filepath.Join(mnt, "stuck"))
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		_, err = f.Read(make([]byte, 10))
		done <- err
	}()
	return done
}

// TestAbortUnblocksReaders: a read blocked on a mount whose server never
// answers fails once the mount is aborted.
func TestAbortUnblocksReaders(t *testing.T) {
	mnt := mountStuck(t)
	done := readResult(mnt)
	select {
	case err := <-done:
		t.Fatalf("read returned before the abort: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	Abort(mnt)
	select {
	case err := <-done:
		if !aborted(err) {
			t.Fatalf("read after abort: %v, want ECONNABORTED or ENOTCONN", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read still blocked 10 s after the abort")
	}
}

// fakeTB has a deadline just past Margin from now.
type fakeTB struct {
	*testing.T
	deadline time.Time
}

func (f fakeTB) Deadline() (time.Time, bool) { return f.deadline, true }

// TestAbortBeforeDeadline: the mount is aborted Margin before the deadline.
func TestAbortBeforeDeadline(t *testing.T) {
	mnt := mountStuck(t)
	done := readResult(mnt)
	AbortBeforeDeadline(fakeTB{T: t, deadline: time.Now().Add(Margin + 500*time.Millisecond)}, mnt)
	select {
	case err := <-done:
		if !aborted(err) {
			t.Fatalf("read after the watchdog: %v, want ECONNABORTED or ENOTCONN", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the watchdog did not abort the mount")
	}
}
