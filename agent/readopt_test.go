package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"stasis/agent"
	"stasis/experiment"
	"stasis/internal/testguest"
)

// TestMain doubles as the switch process: the agents of these tests start
// their switches as this binary with STASIS_TEST_SWITCH=1, as `stasis
// agent` starts `stasis agent switch`.
func TestMain(m *testing.M) {
	if os.Getenv("STASIS_TEST_SWITCH") == "1" {
		dir := ""
		for i, a := range os.Args {
			if a == "--dir" && i+1 < len(os.Args) {
				dir = os.Args[i+1]
			}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := agent.RunSwitch(ctx, dir, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			fmt.Fprintln(os.Stderr, "switch:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestAgentRestartReadopts: an agent that stops (here: lets go of
// everything, as `stasis agent` does on SIGTERM) leaves its experiments
// running, VMs and switch processes alike; a new agent on the same
// directory re-adopts them: the guests still reach each other through the
// switch, and the new agent swaps the experiment out and in.
func TestAgentRestartReadopts(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU guests under TCG; skipped with -short")
	}
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := newEnv(t, "re2")
	dir, err := os.MkdirTemp("", "ag")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := agent.Config{Name: "h1", Dir: dir, Root: e.co.Root, Logger: log, SwitchCommand: []string{"/usr/bin/env", "STASIS_TEST_SWITCH=1", os.Args[0]}}
	a1, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.hosts["h1"], e.co.Hosts["h1"] = a1, a1
	spec := fmt.Sprintf(`
name: re2
project: proj
defaults: {kernel: %s, initrd: %s, memory: 128}
nodes:
  a: {append: "quiet stasis.id=a stasis.shell=1 stasis.ip=10.0.3.1/24"}
  b: {append: "quiet stasis.id=b stasis.shell=1 stasis.ip=10.0.3.2/24"}
lans:
  l: {members: [{node: a}, {node: b}]}
`, f.Kernel, f.Initrd)
	s, _ := experiment.Parse([]byte(spec))
	if _, err := e.co.Up(ctx, []byte(spec), s, nil); err != nil {
		t.Fatal(err)
	}
	// Whichever agent holds it then ends the experiment, VMs and switch
	// process, also when the test fails.
	t.Cleanup(func() { e.co.Down(context.Background(), e.key) })
	for _, n := range []string{"a", "b"} {
		if _, err := e.guest(n).Console.WaitTick(ctx, nil); err != nil {
			t.Fatalf("%s did not boot: %v", n, err)
		}
	}
	e.exec(ctx, "a", "ping -c 1 -W 10 10.0.3.2 >/dev/null")

	a1.Detach() // the agent goes away; its experiment does not
	a2, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.hosts["h1"], e.co.Hosts["h1"] = a2, a2
	t.Cleanup(func() { a2.Close() })
	if ks := a2.Experiments(); len(ks) != 1 || ks[0] != e.key {
		t.Fatalf("re-adopted %v, want %v", ks, e.key)
	}
	if o := a2.Orphans(); len(o) != 0 {
		t.Fatalf("re-adopted VMs listed as orphans: %v", o)
	}
	_, st, err := e.co.Status(ctx, e.key)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st {
		if n.State != "running" {
			t.Fatalf("node %s is %s after the agent restart", n.Node, n.State)
		}
	}
	e.exec(ctx, "b", "ping -c 1 -W 10 10.0.3.1 >/dev/null") // the network survived
	if _, err := e.co.Swapout(ctx, e.key, experiment.SwapoutOptions{Snapshot: "after-restart"}); err != nil {
		t.Fatalf("swapout through the new agent: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "proj", "re2")); !os.IsNotExist(err) {
		t.Fatalf("run directory left after swapout: %v", err)
	}
	if _, err := e.co.Swapin(ctx, e.key, experiment.SwapinOptions{}); err != nil {
		t.Fatalf("swapin through the new agent: %v", err)
	}
	out := e.exec(ctx, "a", "ping -c 1 -W 10 10.0.3.2 >/dev/null && echo reached")
	if !strings.Contains(out, "reached") {
		t.Fatalf("after swapin: %q", out)
	}
	if err := e.co.Down(ctx, e.key); err != nil {
		t.Fatal(err)
	}
	if pids, _ := filepath.Glob(filepath.Join(dir, "*", "*", ".net", "switch.pid")); len(pids) != 0 {
		t.Fatalf("switch state left after down: %v", pids)
	}
}
