// Command e2e is stasis's end-to-end benchmark: it stores real VM state
// (memory images, qcow2 deltas, migration streams of real guests) with
// stasis and with the tools people use today — local disk, tmpfs, rsync,
// casync, restic, borg — side by side in one run, and writes the tables and
// plots of bench/RESULTS.md. `make bench` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type options struct {
	work     string // scratch directory on the disk under test
	out      string // results markdown file to update
	plots    string // directory for PNG plots
	runs     int    // repetitions per measurement (medians reported)
	casfs    string // casfs binary
	only     string // comma-separated workload names; empty = all
	tools    string // comma-separated tool names; empty = all
	nodes    int    // nodes in the experiment workload
	memoryMB int    // RAM of the single-VM workload guest
}

func main() {
	var o options
	flag.StringVar(&o.work, "work", "/var/tmp/stasis-bench", "scratch directory on the disk being measured (wiped)")
	flag.StringVar(&o.out, "out", "bench/RESULTS.md", "results file; the section between the e2e markers is replaced")
	flag.StringVar(&o.plots, "plots", "bench/plots", "directory for PNG plots")
	flag.IntVar(&o.runs, "runs", 3, "runs per measurement; the table shows median and min–max")
	flag.StringVar(&o.casfs, "casfs", "bin/casfs", "casfs binary")
	flag.StringVar(&o.only, "only", "", "comma-separated workloads to run (default all): "+strings.Join(workloadNames(), ","))
	flag.StringVar(&o.tools, "tools", "", "comma-separated tools to compare (default all): stasis,local-disk,tmpfs,rsync,casync,restic,borg")
	flag.IntVar(&o.nodes, "nodes", 10, "nodes in the experiment workloads")
	flag.IntVar(&o.memoryMB, "memory", 512, "RAM (MiB) of the single-VM workload's guest")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: e2e [flags]\n\nRuns stasis's end-to-end benchmarks against local disk, tmpfs and peer tools\n(rsync, casync, restic, borg) and updates the results file and plots.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.runs < 1 {
		fmt.Fprintln(os.Stderr, "e2e: --runs must be at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := runBench(ctx, log, o); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
}

// peerTools returns fresh instances of every tool, stasis first.
func peerTools(o options) []Tool {
	var out []Tool
	for _, t := range allTools(o) {
		if o.tools == "" || strings.Contains(","+o.tools+",", ","+t.Name()+",") {
			out = append(out, t)
		}
	}
	return out
}

func allTools(o options) []Tool {
	return []Tool{
		&stasisTool{bin: o.casfs},
		&copyTool{name: "local-disk"},
		&copyTool{name: "tmpfs", base: "/dev/shm"},
		&rsyncTool{},
		&casyncTool{},
		&resticTool{},
		&borgTool{},
	}
}

// toolVersions records what was measured.
func toolVersions() []string {
	var v []string
	for _, c := range [][]string{{"restic", "version"}, {"borg", "--version"}, {"casync", "--version"}, {"rsync", "--version"}, {"qemu-system-x86_64", "--version"}} {
		out, err := exec.Command(c[0], c[1:]...).Output()
		line := "not installed"
		if err == nil {
			line = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
		}
		v = append(v, fmt.Sprintf("%s: %s", c[0], line))
	}
	return v
}

func machine() string {
	host, _ := os.Hostname()
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	syscall.Sysinfo(&si)
	return fmt.Sprintf("%s, %d cores (%s), %.0f GiB RAM, %s", host, numCPU(), cpu, float64(si.Totalram)*float64(si.Unit)/(1<<30), time.Now().UTC().Format("2006-01-02"))
}

func runBench(ctx context.Context, log *slog.Logger, o options) error {
	if err := os.RemoveAll(o.work); err != nil {
		return err
	}
	if err := os.MkdirAll(o.work, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(o.plots, 0o755); err != nil {
		return err
	}
	r := &report{machine: machine(), versions: toolVersions(), plots: o.plots}
	for _, w := range workloads {
		if o.only != "" && !strings.Contains(","+o.only+",", ","+w.name+",") {
			continue
		}
		log.Info("workload", "name", w.name)
		start := time.Now()
		if err := w.run(ctx, log, o, r); err != nil {
			return fmt.Errorf("workload %s: %w", w.name, err)
		}
		log.Info("workload done", "name", w.name, "took", time.Since(start).Round(time.Second))
	}
	if err := r.writePlots(); err != nil {
		return err
	}
	return r.update(o.out, "go run ./bench/e2e "+strings.Join(os.Args[1:], " "))
}

func numCPU() int {
	n := 0
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "processor") {
			n++
		}
	}
	return n
}
