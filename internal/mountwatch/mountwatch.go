// Package mountwatch keeps a hung test from hanging its whole test binary
// on a FUSE mount that the binary serves itself.
//
// When go test's -timeout fires, the binary panics and exits. If a thread is
// then blocked on a request to a mount the same process serves (a close's
// FUSE_FLUSH waits uninterruptibly), the exit can sleep forever, and go test
// with it: the run never ends and prints nothing. AbortBeforeDeadline aborts
// the connection shortly before the test's deadline instead, so blocked
// calls fail (ECONNABORTED, later ones ENOTCONN), the test fails with what it was doing, and the
// timeout's goroutine dump (if it still comes) is printed by a process that
// can exit.
//
// It cannot help a process whose goroutines are all stopped — a GC's
// stop-the-world waiting for a thread blocked in a page fault on the
// process's own mount — since its timer is a goroutine too; scripts/test.sh
// watches from outside for that.
package mountwatch

import (
	"time"

	"golang.org/x/sys/unix"
)

// Margin is how long before a test's deadline its mounts are aborted.
const Margin = 30 * time.Second

// TB is the part of testing.TB (and *testing.T's Deadline) that
// AbortBeforeDeadline uses.
type TB interface {
	Cleanup(func())
	Logf(format string, args ...any)
}

type deadliner interface {
	Deadline() (time.Time, bool)
}

// AbortBeforeDeadline arms a timer that aborts the FUSE connection of the
// mount at mnt (umount with MNT_FORCE, which FUSE turns into an abort of
// the connection, then a lazy detach) Margin before t's deadline. The timer
// is stopped at t's cleanup. Tests without a deadline (-timeout 0) and
// benchmarks are left alone.
func AbortBeforeDeadline(t TB, mnt string) {
	d, ok := t.(deadliner)
	if !ok {
		return
	}
	deadline, ok := d.Deadline()
	if !ok {
		return
	}
	wait := time.Until(deadline) - Margin
	if wait < 0 {
		wait = 0
	}
	timer := time.AfterFunc(wait, func() {
		t.Logf("mountwatch: the test binary's deadline is %s away: aborting the FUSE mount %s so that nothing blocks on it forever", time.Until(deadline).Round(time.Second), mnt)
		Abort(mnt)
	})
	t.Cleanup(func() { timer.Stop() })
}

// Abort aborts the FUSE connection of the mount at mnt and detaches it:
// every request waiting on it fails with ECONNABORTED, later ones with
// ENOTCONN.
func Abort(mnt string) {
	_ = unix.Unmount(mnt, unix.MNT_FORCE)
	_ = unix.Unmount(mnt, unix.MNT_DETACH)
}
