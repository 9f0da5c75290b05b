package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"stasis/agent"
	"stasis/experiment"
	"stasis/internal/testguest"
)

// sample is one run's measurements.
type sample struct {
	Downtime time.Duration
	Phases   map[string]time.Duration // swapout phases by name
	Swapin   time.Duration
	Saved    float64 // bytes saved per node (NodeSaved.Bytes, mean)
	Uploaded float64 // bytes casfs uploaded during the swapout, per node
}

// specYAML is an experiment of n test guests of mem MiB on one LAN.
func specYAML(f testguest.Files, n, mem int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "name: exp%d\nproject: bench\ndefaults:\n  kernel: %s\n  initrd: %s\n  memory: %d\nnodes:\n", n, f.Kernel, f.Initrd, mem)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  n%d: {append: \"nokaslr no_timer_check panic=-1 quiet stasis.id=n%d stasis.ip=10.0.0.%d/24\"}\n", i, i, i)
	}
	b.WriteString("lans:\n  lan:\n    members:\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "      - {node: n%d, address: 10.0.0.%d/24}\n", i, i)
	}
	return []byte(b.String())
}

// runOnce boots an experiment of n nodes on a fresh casfs store, waits for
// every guest to tick, swaps it out and back in, and takes everything down
// again — QEMUs, switch, mount, temporary directories — whatever happens.
func runOnce(ctx context.Context, o options, f testguest.Files, log *slog.Logger, n int, sequential bool) (s sample, err error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	work, err := os.MkdirTemp(o.work, "stasis-exp-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(work)
	mnt, err := mountCasfs(o.casfs, work)
	if err != nil {
		return s, err
	}
	defer func() {
		if uerr := mnt.Unmount(); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount: %w: %s", uerr, tailFile(mnt.log, 5)))
		}
	}()
	// Short: unix socket paths under it must stay below 108 bytes.
	agDir, err := os.MkdirTemp("", "ag")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(agDir)
	conc := 0
	if sequential {
		conc = 1
	}
	a, err := agent.New(agent.Config{Name: "h1", Dir: agDir, Root: filepath.Join(mnt.mnt, "experiments"), Logger: log, SaveConcurrency: conc})
	if err != nil {
		return s, err
	}
	defer func() {
		if cerr := a.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("agent close: %w", cerr))
		}
	}()
	co := &experiment.Coordinator{Hosts: map[string]experiment.Host{"h1": a}, Root: filepath.Join(mnt.mnt, "experiments"),
		State: filepath.Join(work, "state"), Logger: log, Sequential: sequential}
	spec := specYAML(f, n, o.mem)
	sp, err := experiment.Parse(spec)
	if err != nil {
		return s, err
	}
	key := experiment.Key{Project: sp.Project, Name: sp.Name}
	if _, err := co.Up(ctx, spec, sp, nil); err != nil {
		return s, fmt.Errorf("up: %w", err)
	}
	defer co.Down(context.WithoutCancel(ctx), key)

	// Booted and settled: every guest's console shows its second tick.
	consoles := map[string]*testguest.Console{}
	for _, nd := range sp.NodeNames() {
		consoles[nd] = &testguest.Console{Path: filepath.Join(a.NodeDir(key, nd), "console.log")}
	}
	for _, nd := range sp.NodeNames() {
		if _, err := consoles[nd].WaitTick(ctx, func(t testguest.Tick) bool { return t.N >= 2 }); err != nil {
			return s, fmt.Errorf("node %s did not boot: %w", nd, err)
		}
	}

	st0, err := mnt.Stats()
	if err != nil {
		return s, err
	}
	out, err := co.Swapout(ctx, key, experiment.SwapoutOptions{Snapshot: "s1"})
	if err != nil {
		return s, fmt.Errorf("swapout: %w", err)
	}
	st1, err := mnt.Stats()
	if err != nil {
		return s, err
	}
	s.Downtime = out.Downtime
	s.Phases = map[string]time.Duration{}
	for _, p := range out.Phases {
		s.Phases[p.Name] += p.Took
	}
	if len(out.Nodes) != n {
		return s, fmt.Errorf("swapout saved %d nodes, want %d", len(out.Nodes), n)
	}
	for _, ns := range out.Nodes {
		s.Saved += float64(ns.Bytes) / float64(n)
	}
	s.Uploaded = float64(st1.Mount.BytesUploadedEnc-st0.Mount.BytesUploadedEnc) / float64(n)

	in, err := co.Swapin(ctx, key, experiment.SwapinOptions{})
	if err != nil {
		return s, fmt.Errorf("swapin: %w", err)
	}
	s.Swapin = in.Took
	// The guests run again: each ticks once more (not part of the timing).
	for _, nd := range sp.NodeNames() {
		c := testguest.NewConsole(filepath.Join(a.NodeDir(key, nd), "console.log"))
		if _, err := c.WaitTick(ctx, nil); err != nil {
			return s, fmt.Errorf("node %s does not tick after swapin: %w", nd, err)
		}
	}
	return s, nil
}
