package hypervisor

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestClaimLocalExclusive: of many concurrent claims of the same paths
// exactly one wins; the losers create nothing and remove nothing.
func TestClaimLocalExclusive(t *testing.T) {
	dir := t.TempDir()
	paths := []string{filepath.Join(dir, "a", "disk.qcow2"), filepath.Join(dir, "ram")}
	const n = 8
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		won    []*LocalFiles
		losses []error
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := ClaimLocal(paths, false)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				losses = append(losses, err)
				return
			}
			won = append(won, l)
		}()
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d claims won, want 1 (losses %v)", len(won), losses)
	}
	for _, err := range losses {
		if !errors.Is(err, ErrInUse) || !errors.Is(err, os.ErrExist) {
			t.Fatalf("loser's error %v, want ErrInUse and os.ErrExist", err)
		}
	}
	w := won[0]
	w.File(0).WriteString("winner")
	if b, err := os.ReadFile(paths[0]); err != nil || string(b) != "winner" {
		t.Fatalf("winner's file: %q %v", b, err)
	}

	// Remove leaves a path alone that someone replaced since.
	os.Remove(paths[1])
	os.WriteFile(paths[1], []byte("someone else's"), 0o644)
	w.Remove()
	if _, err := os.Stat(paths[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Remove left the claimed file: %v", err)
	}
	if b, _ := os.ReadFile(paths[1]); string(b) != "someone else's" {
		t.Fatal("Remove removed a file it did not create")
	}
}

// TestClaimLocalOverwrite: overwrite replaces a file nobody holds, and
// refuses one a process holds a lock on, as QEMU does its images.
func TestClaimLocalOverwrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.qcow2")
	os.WriteFile(p, []byte("old"), 0o644)
	if _, err := ClaimLocal([]string{p}, false); !errors.Is(err, ErrInUse) {
		t.Fatalf("claim of an existing file: %v", err)
	}
	l, err := ClaimLocal([]string{p}, true)
	if err != nil {
		t.Fatal(err)
	}
	l.Keep()
	if fi, _ := os.Stat(p); fi.Size() != 0 {
		t.Fatal("overwrite kept the old content")
	}

	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 100, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if _, err := ClaimLocal([]string{filepath.Join(dir, "other"), p}, true); !errors.Is(err, ErrInUse) {
		t.Fatalf("overwrite of a locked file: %v", err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the locked file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "other")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a failed claim left a file it created")
	}
}
