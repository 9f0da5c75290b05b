package qemuhook

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stasis/hypervisor"
	"stasis/internal/testguest"
)

// vmCase is a guest under test: started, ticking.
type vmCase struct {
	g    *testguest.Guest
	dir  string
	last testguest.Tick
}

func bootGuest(t *testing.T, ctx context.Context, f testguest.Files, name string, ramFile bool, mem int) *vmCase {
	t.Helper()
	dir := t.TempDir()
	cfg := testguest.Config{Dir: dir, Name: name, MemMiB: mem}
	if ramFile {
		shm := filepath.Join("/dev/shm", "stasis-test-"+filepath.Base(dir)+".ram")
		t.Cleanup(func() { os.Remove(shm) })
		cfg.RAMFile = shm
	}
	g := testguest.Start(t, f, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(g.Console.Path)
			q, _ := os.ReadFile(g.Log)
			q2, _ := os.ReadFile(filepath.Join(dir, "qemu-restored.log"))
			q = append(q, q2...)
			t.Logf("console %s:\n%s\nqemu log:\n%s", name, tailStr(string(b), 3000), q)
		}
	})
	tk, err := g.Console.WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N >= 3 })
	if err != nil {
		t.Fatal(err)
	}
	return &vmCase{g: g, dir: dir, last: tk}
}

func tailStr(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// lastTick drains the console and returns the last tick printed so far.
func (v *vmCase) lastTick(t *testing.T) testguest.Tick {
	t.Helper()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		tk, err := v.g.Console.WaitTick(ctx, nil)
		cancel()
		if err != nil {
			return v.last
		}
		v.last = tk
	}
}

func connect(t *testing.T, ctx context.Context, qmp string, mode string) *Machine {
	t.Helper()
	m, err := Connect(ctx, Config{QMP: qmp, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func restore(t *testing.T, ctx context.Context, snap string, opts RestoreOptions) *Machine {
	t.Helper()
	if opts.LocalDir == "" {
		opts.LocalDir = t.TempDir()
	}
	m, err := Restore(ctx, snap, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Kill)
	return m
}

// checkContinues waits for the first tick after a restore and checks the
// guest carried on: same boot, next counter, the disk holds the last
// counter written, and the clock advanced by about the guest's run time.
func checkContinues(t *testing.T, ctx context.Context, v *vmCase, before testguest.Tick, away time.Duration) testguest.Tick {
	t.Helper()
	tk, err := v.g.Console.WaitTick(ctx, func(tk testguest.Tick) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if tk.Boot != before.Boot {
		t.Fatalf("guest rebooted: boot id %s, was %s", tk.Boot, before.Boot)
	}
	if tk.N != before.N+1 {
		t.Fatalf("counter %d after restore, want %d (last before swapout %d)", tk.N, before.N+1, before.N)
	}
	if tk.Disk != before.N {
		t.Fatalf("disk holds %d after restore, want %d", tk.Disk, before.N)
	}
	// One tick is about a second of guest time; allow slack for TCG, but
	// far less than the time spent swapped out.
	jump := tk.Clock - before.Clock
	if jump < 0 || jump > 4 || time.Duration(jump)*time.Second >= away && away > 5*time.Second {
		t.Fatalf("guest clock moved %d s across a swapout that lasted %v (want ~1 s: virtual time)", jump, away.Round(time.Second))
	}
	t.Logf("continued: n %d->%d, disk %d, clock +%ds after %v swapped out", before.N, tk.N, tk.Disk, jump, away.Round(time.Second))
	return tk
}

func TestSwapoutSwapinStream(t *testing.T)  { testRoundTrip(t, ModeStream, false, 10*time.Second) }
func TestSwapoutSwapinRAMFile(t *testing.T) { testRoundTrip(t, ModeRAMFile, true, 0) }

// TestSwapoutSwapinMappedRAM runs only where QEMU >= 9 is installed (Debian
// 12 ships 7.2; bookworm-backports has 10.0).
func TestSwapoutSwapinMappedRAM(t *testing.T) {
	testguest.Require(t)
	if maj, min := qemuVersion(t); maj < 9 {
		t.Skipf("mapped-ram needs QEMU >= 9; installed QEMU is %d.%d", maj, min)
	}
	testRoundTrip(t, ModeMappedRAM, false, 0)
}

// TestModeUnsupported: asking for a mode the VM or QEMU cannot do fails in
// Swapout's preflight, before the VM is paused: it is still running and
// ticks on without a Resume. Save itself still refuses the mode when called
// on a paused VM without preflight (Checkpoint), leaving it paused and
// resumable.
func TestModeUnsupported(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v := bootGuest(t, ctx, f, "unsup", false, 256)
	modes := []string{ModeRAMFile}
	if maj, _ := qemuVersion(t); maj < 9 {
		modes = append(modes, ModeMappedRAM)
	}
	for _, mode := range modes {
		m := connect(t, ctx, v.g.QMP, mode)
		if err := m.Preflight(ctx); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("%s: Preflight: %v", mode, err)
		}
		snap := filepath.Join(t.TempDir(), "s")
		_, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{})
		var se *hypervisor.StepError
		if !errors.As(err, &se) || se.Step != hypervisor.StepPreflight || se.Paused || !errors.Is(err, ErrUnsupported) {
			t.Fatalf("%s: Swapout: %v", mode, err)
		}
		if st, err := m.Status(ctx); err != nil || st != "running" {
			t.Fatalf("%s: status after a failed preflight %q %v, want running", mode, st, err)
		}
		before := v.lastTick(t)
		tk, err := v.g.Console.WaitTick(ctx, nil)
		if err != nil || tk.N != before.N+1 {
			t.Fatalf("%s: guest not ticking after a failed preflight: %+v %v, before %+v", mode, tk, err, before)
		}
		v.last = tk

		// Without preflight: Save refuses, the VM stays paused.
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		_, err = hypervisor.Checkpoint(ctx, m, snap, time.Now(), hypervisor.SwapoutOptions{})
		if !errors.Is(err, ErrUnsupported) || !hypervisor.IsPaused(err) {
			t.Fatalf("%s: Checkpoint: %v", mode, err)
		}
		if st, err := m.Status(ctx); err != nil || st != "paused" {
			t.Fatalf("%s: status after a failed save %q %v, want paused", mode, st, err)
		}
		before = v.lastTick(t)
		if err := m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		tk, err = v.g.Console.WaitTick(ctx, nil)
		if err != nil || tk.N != before.N+1 {
			t.Fatalf("%s: after resume %+v %v, before %+v", mode, tk, err, before)
		}
		v.last = tk
		m.Close()
	}
}

func testRoundTrip(t *testing.T, mode string, ramFile bool, sleep time.Duration) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v := bootGuest(t, ctx, f, "rt", ramFile, 256)
	m := connect(t, ctx, v.g.QMP, mode)
	snap := filepath.Join(t.TempDir(), "snap")
	res, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := time.Now()
	select {
	case <-v.g.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("qemu still running after swapout")
	}
	if res.Manifest.Mode != mode {
		t.Fatalf("mode %s, want %s", res.Manifest.Mode, mode)
	}
	t.Logf("swapout %s: %d bytes, downtime %v, files %+v", mode, res.Bytes, res.Downtime, res.Manifest.Files)
	before := v.lastTick(t)
	time.Sleep(sleep)
	r := restore(t, ctx, snap, RestoreOptions{Log: filepath.Join(v.dir, "qemu-restored.log")})
	v.g.Console.Done = r.Exited()
	checkContinues(t, ctx, v, before, time.Since(out))
}

func TestRewriteArgv(t *testing.T) {
	argv := []string{"qemu", "-S", "-m", "256M", "-drive", "file=/a/disk.qcow2,if=virtio,format=qcow2",
		"-object", "memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/x.ram,share=on",
		"-blockdev", `{"driver":"file","filename":"/a/disk.qcow2"}`,
		"-rtc", "base=utc,clock=host,driftfix=slew", "--incoming", "defer", "-name", "file=/a/disk.qcow2x"}
	got := rewriteArgv(argv, map[string]string{"/a/disk.qcow2": "/b/disk.qcow2", "/dev/shm/x.ram": "/dev/shm/y.ram"},
		time.Date(2021, 2, 3, 4, 5, 6, 0, time.UTC))
	want := []string{"qemu", "-m", "256M", "-drive", "file=/b/disk.qcow2,if=virtio,format=qcow2",
		"-object", "memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/y.ram,share=on",
		"-blockdev", `{"driver":"file","filename":"/b/disk.qcow2"}`,
		"-rtc", "base=2021-02-03T04:05:06,driftfix=slew,clock=vm", "-name", "file=/a/disk.qcow2x", "-S", "-incoming", "defer"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
	got = rewriteArgv([]string{"qemu"}, nil, time.Time{})
	if strings.Join(got, " ") != "qemu -rtc clock=vm -S -incoming defer" {
		t.Fatalf("got %q", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{}, {QMP: "x", Mode: "bogus"}, {QMP: "x", MaxBandwidth: -1}} {
		if _, err := Connect(context.Background(), c); err == nil || errors.Is(err, context.Canceled) {
			t.Errorf("Connect(%+v) accepted", c)
		}
	}
}

// TestCheckpointKeepResume: a snapshot with Keep leaves the VM paused after
// a completed migration; Resume brings it back with its disk writable (QEMU
// re-activates the images the migration handed over).
func TestCheckpointKeepResume(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v := bootGuest(t, ctx, f, "keep", false, 256)
	m := connect(t, ctx, v.g.QMP, ModeAuto)
	snap := filepath.Join(t.TempDir(), "snap")
	if _, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(ctx); err != nil || st == "running" {
		t.Fatalf("status after a kept snapshot: %q %v", st, err)
	}
	// QEMU cannot save it again before it has run: preflight says so, and
	// a swapout leaves it as it is.
	_, err := hypervisor.Swapout(ctx, m, filepath.Join(t.TempDir(), "again"), hypervisor.SwapoutOptions{Keep: true})
	var se *hypervisor.StepError
	if !errors.As(err, &se) || se.Step != hypervisor.StepPreflight || !strings.Contains(err.Error(), "postmigrate") {
		t.Fatalf("second swapout of a kept VM: %v", err)
	}
	before := v.lastTick(t)
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	tk, err := v.g.Console.WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N >= before.N+2 })
	if err != nil {
		t.Fatal(err)
	}
	if tk.Boot != before.Boot || tk.Disk != tk.N-1 {
		t.Fatalf("after resume %+v (disk not written?), before %+v", tk, before)
	}
	if _, err := hypervisor.Verify(snap, nil); err != nil {
		t.Fatal(err)
	}
}
