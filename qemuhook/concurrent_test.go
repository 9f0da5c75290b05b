package qemuhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"stasis/hypervisor"
	"stasis/internal/testguest"
)

// TestConcurrentRestores: two restores of one snapshot into the same local
// directory at once: exactly one succeeds, the other fails naming the file
// it would have taken, and the winner's disk and VM are untouched by the
// loser's cleanup.
func TestConcurrentRestores(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v := bootGuest(t, ctx, f, "conc", false, 256)
	m := connect(t, ctx, v.g.QMP, ModeStream)
	snap := filepath.Join(t.TempDir(), "snap")
	if _, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{}); err != nil {
		t.Fatal(err)
	}
	<-v.g.Exited()
	before := v.lastTick(t)

	local := t.TempDir()
	type result struct {
		m   *Machine
		err error
	}
	results := make([]result, 2)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := Restore(ctx, snap, RestoreOptions{LocalDir: local, Log: filepath.Join(v.dir, fmt.Sprintf("qemu-restored-%d.log", i))})
			if err == nil {
				t.Cleanup(m.Kill)
			}
			results[i] = result{m, err}
		}()
	}
	wg.Wait()
	var winner *Machine
	var lossErr error
	for _, r := range results {
		if r.err == nil {
			if winner != nil {
				t.Fatal("both restores succeeded")
			}
			winner = r.m
		} else {
			lossErr = r.err
		}
	}
	if winner == nil || lossErr == nil {
		t.Fatalf("want one winner and one loser: %v, %v", results[0].err, results[1].err)
	}
	// The loser is refused at the first file both claim (normally), or,
	// were it so slow that the winner's QEMU already runs, at its QMP
	// socket: either way before it touched anything.
	disk := filepath.Join(local, filepath.Base(v.g.Disk))
	if !errors.Is(lossErr, hypervisor.ErrInUse) || !strings.Contains(lossErr.Error(), disk) && !strings.Contains(lossErr.Error(), v.g.QMP) {
		t.Fatalf("loser's error %v, want ErrInUse naming %s or %s", lossErr, disk, v.g.QMP)
	}
	t.Logf("loser: %v", lossErr)
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("the winner's disk: %v", err)
	}
	if st, err := winner.Status(ctx); err != nil || st != "running" {
		t.Fatalf("winner's status %q %v", st, err)
	}
	v.g.Console.Done = winner.Exited()
	checkContinues(t, ctx, v, before, 0)
	// The guest writes its disk on every tick: its next tick reads back
	// the counter it wrote, so the file it runs on is intact.
	tk, err := v.g.Console.WaitTick(ctx, nil)
	if err != nil || tk.Disk != tk.N-1 {
		t.Fatalf("after restore: %+v %v", tk, err)
	}
}

// TestRestoreRefusesLiveQMP: a restore whose QMP socket belongs to a VM
// still alive (here: paused after a kept snapshot) is refused, creates no
// local file, and the VM still answers and resumes.
func TestRestoreRefusesLiveQMP(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v := bootGuest(t, ctx, f, "live", false, 256)
	m := connect(t, ctx, v.g.QMP, ModeStream)
	snap := filepath.Join(t.TempDir(), "snap")
	if _, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	local := t.TempDir()
	r, err := Restore(ctx, snap, RestoreOptions{LocalDir: local})
	if err == nil {
		r.Kill()
		t.Fatal("restore over a live VM's QMP socket succeeded")
	}
	if !errors.Is(err, hypervisor.ErrInUse) || !strings.Contains(err.Error(), v.g.QMP) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", v.g.Pid())) {
		t.Fatalf("err %v, want ErrInUse naming %s and pid %d", err, v.g.QMP, v.g.Pid())
	}
	if ents, _ := os.ReadDir(local); len(ents) != 0 {
		t.Fatalf("a refused restore created %v", ents)
	}
	if st, err := m.Status(ctx); err != nil || st == "running" {
		t.Fatalf("the kept VM's status %q %v, want paused", st, err)
	}
	before := v.lastTick(t)
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if tk, err := v.g.Console.WaitTick(ctx, nil); err != nil || tk.N != before.N+1 || tk.Boot != before.Boot {
		t.Fatalf("after resume %+v %v, before %+v", tk, err, before)
	}
}

// TestFreeSocket: nothing at the path and a dead socket are fine (the dead
// one is removed); a socket something answers on and a non-socket are
// refused.
func TestFreeSocket(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "qmp.sock")
	if err := freeSocket(ctx, path); err != nil {
		t.Fatalf("no socket: %v", err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	err = freeSocket(ctx, path)
	if !errors.Is(err, hypervisor.ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("live socket: %v", err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if err := freeSocket(ctx, path); err != nil {
		t.Fatalf("dead socket: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dead socket not removed: %v", err)
	}
	os.WriteFile(path, nil, 0o644)
	if err := freeSocket(ctx, path); !errors.Is(err, hypervisor.ErrInUse) {
		t.Fatalf("a regular file: %v", err)
	}
}
