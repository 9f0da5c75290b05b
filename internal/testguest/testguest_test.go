package testguest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseTick(t *testing.T) {
	tk, ok := ParseTick("STASIS id=g1 n=12 boot=92c98a70-b6fd clock=1795541728 up=13.83 disk=11\r")
	if !ok || tk.ID != "g1" || tk.N != 12 || tk.Boot != "92c98a70-b6fd" || tk.Clock != 1795541728 || tk.Up != 13.83 || tk.Disk != 11 {
		t.Fatalf("got %+v ok=%v", tk, ok)
	}
	tk, ok = ParseTick("STASIS id=g1 n=1 boot=x clock=5 up=2.5 disk=none")
	if !ok || tk.Disk != -1 {
		t.Fatalf("disk=none: got %+v ok=%v", tk, ok)
	}
	for _, bad := range []string{"", "STASIS-BOOT id=g boot=x", "STASIS n=x boot=y clock=1", "STASIS id=g n=1", "hello STASIS n=1"} {
		if _, ok := ParseTick(bad); ok {
			t.Errorf("ParseTick(%q) accepted", bad)
		}
	}
}

func TestConsolePartialLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.log")
	c := NewConsole(p)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	os.WriteFile(p, []byte("noise\nSTASIS id=a n=1 boot=b clock=1 up=1 di"), 0o644)
	go func() {
		time.Sleep(200 * time.Millisecond)
		f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("sk=0\nSTASIS id=a n=2 boot=b clock=2 up=2 disk=1\n")
		f.Close()
	}()
	tk, err := c.WaitTick(ctx, nil)
	if err != nil || tk.N != 1 || tk.Disk != 0 {
		t.Fatalf("first tick %+v, %v", tk, err)
	}
	tk, err = c.WaitTick(ctx, nil)
	if err != nil || tk.N != 2 {
		t.Fatalf("second tick %+v, %v", tk, err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := c.WaitTick(short, nil); err == nil {
		t.Fatal("WaitTick returned a tick that was never written")
	}
}

// TestBoot boots the real guest and checks everything tests rely on: ticks,
// the disk read-back, the shell, and that QEMU is gone after Kill.
func TestBoot(t *testing.T) {
	dir := t.TempDir()
	t.Cleanup(func() {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		q, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
		t.Logf("console:\n%s\nqemu:\n%s", b, q)
	})
	f := Require(t)
	g := Start(t, f, Config{Dir: dir, Name: "tb", Shell: true})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := g.Console.Wait(ctx, func(l string) bool {
		return strings.HasPrefix(l, "STASIS-BOOT id=tb") && strings.Contains(l, "base=STASIS-BASE-V1")
	}); err != nil {
		t.Fatal(err)
	}
	first, err := g.Console.WaitTick(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	next, err := g.Console.WaitTick(ctx, func(tk Tick) bool { return tk.N >= first.N+2 })
	if err != nil {
		t.Fatal(err)
	}
	if next.Boot != first.Boot || next.Disk != next.N-1 || next.Clock < first.Clock {
		t.Fatalf("ticks inconsistent: first %+v next %+v", first, next)
	}
	out, rc, err := g.Exec(ctx, "cat /proc/sys/kernel/random/boot_id; false")
	if err != nil || rc != 1 || strings.TrimSpace(out) != first.Boot {
		t.Fatalf("Exec: out %q rc %d err %v, want boot id %s rc 1", out, rc, err, first.Boot)
	}
	g.Kill()
	select {
	case <-g.Exited():
	default:
		t.Fatal("qemu still running after Kill")
	}
}
