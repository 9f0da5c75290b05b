package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stasis/agent"
	"stasis/internal/testguest"
	"stasis/internal/testguest/casfsmount"
)

// runExp runs `stasis exp ARGS...` on a fresh command tree and returns
// stdout.
func runExp(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newExpCmd()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(ctx)
	t.Logf("stasis exp %s\n%s%s", strings.Join(args, " "), out.String(), errOut.String())
	return out.String(), err
}

func TestExpValidateReportsEveryError(t *testing.T) {
	f := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(f, []byte("name: e\nproject: p\nnodes:\n  a: {memory: 4}\nlans:\n  l: {rate: fast, members: [{node: zz}]}\n"), 0o644)
	_, err := runExp(t, context.Background(), "validate", f)
	if err == nil {
		t.Fatal("a bad file validated")
	}
	for _, want := range []string{"bad.yaml", "rate", "needs a kernel or a disk image", "memory 4 MiB", `unknown node "zz"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
}

// TestExpCLI drives a 2-node experiment through a real agent on its unix
// socket with the commands a user types: up, status, swapout, swapin,
// history, down; and checks that a second swapout needs no manual rm and
// that the guests resumed (their console counters continue).
func TestExpCLI(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	mnt := casfsmount.New(t, casfsmount.Options{})
	dir, err := os.MkdirTemp("", "ag") // short: socket paths stay under 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a, err := agent.New(agent.Config{Name: "h1", Dir: filepath.Join(dir, "run"), Root: filepath.Join(mnt.Dir, "experiments"), Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- agent.Serve(sctx, a, sock) }()
	t.Cleanup(func() {
		stop()
		<-served
		a.Close()
	})
	for i := 0; ; i++ { // wait until Serve listens
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 500 {
			t.Fatal("agent socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The file names the kernel relatively: up must hand absolute paths
	// to the agent.
	specDir := t.TempDir()
	os.Symlink(f.Kernel, filepath.Join(specDir, "vmlinuz"))
	os.Symlink(f.Initrd, filepath.Join(specDir, "initrd.gz"))
	spec := filepath.Join(specDir, "two.yaml")
	os.WriteFile(spec, []byte(`name: two
project: demo
defaults: {kernel: vmlinuz, initrd: initrd.gz, memory: 128M}
nodes:
  a: {append: "quiet stasis.id=a stasis.ip=10.0.0.1/24"}
  b: {append: "quiet stasis.id=b stasis.ip=10.0.0.2/24"}
lans:
  lan0: {rate: 10mbit, members: [{node: a, address: 10.0.0.1/24}, {node: b, address: 10.0.0.2/24}]}
`), 0o644)
	common := []string{"--agent", sock, "--root", filepath.Join(mnt.Dir, "experiments"), "--state", filepath.Join(dir, "state"), "--no-progress"}
	exp := func(args ...string) string {
		t.Helper()
		out, err := runExp(t, ctx, append(args, common...)...)
		if err != nil {
			t.Fatalf("stasis exp %s: %v", args[0], err)
		}
		return out
	}
	if out := exp("up", spec); !strings.Contains(out, "experiment demo/two is up: 2 nodes") {
		t.Fatalf("up: %q", out)
	}
	con := func(n string) *testguest.Console {
		return testguest.NewConsole(filepath.Join(a.NodeDir(keyOf("demo/two"), n), "console.log"))
	}
	ticks := map[string]testguest.Tick{}
	for _, n := range []string{"a", "b"} {
		tk, err := con(n).WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N >= 2 })
		if err != nil {
			t.Fatalf("%s did not boot: %v", n, err)
		}
		ticks[n] = tk
	}
	if out := exp("status", "demo/two"); !strings.Contains(out, "running") || strings.Count(out, "h1") != 2 {
		t.Fatalf("status: %q", out)
	}
	for round := 1; round <= 2; round++ {
		out := exp("swapout", "demo/two", "--snapshot", fmt.Sprintf("r%d", round))
		if !strings.Contains(out, "swapped out: snapshot r"+fmt.Sprint(round)) || !strings.Contains(out, "downtime") || !strings.Contains(out, "uploaded") {
			t.Fatalf("swapout: %q", out)
		}
		if out := exp("status", "demo/two"); !strings.Contains(out, "swapped-out") {
			t.Fatalf("status after swapout: %q", out)
		}
		if _, err := os.Stat(filepath.Join(mnt.Dir, "experiments", "demo", "two", ".snapshots", fmt.Sprintf("r%d", round), "experiment.json")); err != nil {
			t.Fatal(err)
		}
		if out := exp("swapin", "demo/two"); !strings.Contains(out, "swapped in from snapshot r"+fmt.Sprint(round)) {
			t.Fatalf("swapin: %q", out)
		}
		for _, n := range []string{"a", "b"} {
			prev := ticks[n]
			tk, err := con(n).WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N > prev.N+1 })
			if err != nil {
				t.Fatalf("%s: no tick after swapin: %v", n, err)
			}
			if tk.Boot != prev.Boot {
				t.Fatalf("%s rebooted across the swap: boot %s, was %s", n, tk.Boot, prev.Boot)
			}
			ticks[n] = tk
		}
	}
	if out := exp("history", "demo/two"); strings.Count(out, "swapout") != 2 || strings.Count(out, "swapin") != 2 {
		t.Fatalf("history: %q", out)
	}
	if out := exp("ls"); !strings.Contains(out, "demo/two") {
		t.Fatalf("ls: %q", out)
	}
	if out := exp("down", "demo/two"); !strings.Contains(out, "is down") {
		t.Fatalf("down: %q", out)
	}
	if len(a.Experiments()) != 0 {
		t.Fatalf("agent still runs %v after down", a.Experiments())
	}
}
