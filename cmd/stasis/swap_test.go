package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"stasis/hypervisor"
	"stasis/internal/testguest"
)

func swapOpts(out *bytes.Buffer) *swapOptions {
	return &swapOptions{noProgress: true, jsonOut: true, out: out, errOut: os.Stderr, mode: "auto", xl: "xl"}
}

// TestSwapCLIQEMU swaps a real guest out and back in through the CLI code.
func TestSwapCLIQEMU(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	g := testguest.Start(t, f, testguest.Config{Dir: dir, Name: "cli"})
	before, err := g.Console.WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N >= 2 })
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	o := swapOpts(&out)
	o.qmp, o.to = g.QMP, filepath.Join(t.TempDir(), "snap") // mode auto: stream
	if err := runSwapout(ctx, o, nil); err != nil {
		t.Fatal(err)
	}
	var s swapSummary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if s.Op != "swapout" || s.Driver != "qemu" || s.Mode != "stream" || s.Bytes <= 0 || s.Downtime <= 0 || s.GuestTime == "" || !strings.Contains(s.Note, "not on casfs") {
		t.Fatalf("summary %+v", s)
	}
	<-g.Exited()
	// Drain what the guest printed before it went away.
	for {
		c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		tk, err := g.Console.WaitTick(c, nil)
		cancel()
		if err != nil {
			break
		}
		before = tk
	}

	out.Reset()
	o = swapOpts(&out)
	o.from, o.localDir, o.qemuLog = s.Dir, t.TempDir(), filepath.Join(dir, "restored.log")
	if err := runSwapin(ctx, o, nil); err != nil {
		t.Fatal(err)
	}
	var s2 swapSummary
	if err := json.Unmarshal(out.Bytes(), &s2); err != nil || s2.Pid == 0 {
		t.Fatalf("%v: %s", err, out.String())
	}
	t.Cleanup(func() { syscall.Kill(s2.Pid, syscall.SIGKILL) })
	g.Console.Done = nil
	tk, err := g.Console.WaitTick(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Boot != before.Boot || tk.N != before.N+1 {
		t.Fatalf("after swapin %+v, before %+v", tk, before)
	}
	// Swapping in again while the restored VM runs is refused: its QMP
	// socket answers. The local files are left alone.
	err = runSwapin(ctx, o, nil)
	if !errors.Is(err, hypervisor.ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("qemu pid %d", s2.Pid)) {
		t.Fatalf("second swapin while the first VM runs: %v", err)
	}
	if ents, _ := os.ReadDir(o.localDir); len(ents) == 0 {
		t.Fatal("the refused swapin removed the running VM's files")
	}
	if tk2, err := g.Console.WaitTick(ctx, nil); err != nil || tk2.N != tk.N+1 {
		t.Fatalf("the running VM after a refused swapin: %+v %v", tk2, err)
	}
}

// TestSwapCLIXen drives the Xen path with the stand-in xl; swapin finds
// the xen driver through hypervisor.Restore and passes it --xl.
func TestSwapCLIXen(t *testing.T) {
	if got := strings.Join(hypervisor.Drivers(), ","); got != "qemu,xen" {
		t.Fatalf("registered drivers %s, want qemu,xen", got)
	}
	xl, _ := filepath.Abs("../../xenhook/testdata/xl")
	d := t.TempDir()
	t.Setenv("XL_LOG", filepath.Join(d, "xl.log"))
	t.Setenv("XL_STATE", filepath.Join(d, "state"))
	disk := filepath.Join(d, "n.qcow2")
	os.WriteFile(disk, bytes.Repeat([]byte("d"), 70000), 0o644)
	ctx := context.Background()
	var out bytes.Buffer
	o := swapOpts(&out)
	o.xenDomain, o.xl, o.to, o.xenDisks = "node1", xl, filepath.Join(d, "snap"), []string{"xvda=" + disk}
	if err := runSwapout(ctx, o, nil); err != nil {
		t.Fatal(err)
	}
	var s swapSummary
	json.Unmarshal(out.Bytes(), &s)
	if s.Driver != "xen" || s.Mode != "xl-save" {
		t.Fatalf("summary %s", out.String())
	}
	out.Reset()
	o = swapOpts(&out)
	o.from, o.xl, o.localDir = filepath.Join(d, "snap"), xl, t.TempDir()
	if err := runSwapin(ctx, o, nil); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(filepath.Join(d, "xl.log"))
	if !strings.Contains(string(log), "restore -p -e /dev/fd/3\nunpause node1") {
		t.Fatalf("xl log:\n%s", log)
	}
	// Bad flags.
	for _, bad := range []*swapOptions{{to: "x"}, {qmp: "a", xenDomain: "b", to: "x"}, {xenDomain: "n", to: "x", xenDisks: []string{"nopath"}}} {
		bad.out, bad.errOut = &out, os.Stderr
		if err := runSwapout(ctx, bad, nil); err == nil {
			t.Errorf("runSwapout(%+v) accepted", bad)
		}
	}
	if err := runSwapin(ctx, &swapOptions{out: &out, errOut: os.Stderr}, nil); err == nil {
		t.Error("swapin without --from accepted")
	}
}
