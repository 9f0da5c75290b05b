package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// cell is one row of the table: an experiment size and a save mode.
type cell struct {
	nodes int
	mode  string
}

type report struct {
	opts       options
	args       []string
	start, end time.Time
	samples    map[cell][]sample
	failed     map[cell]int
	load       []float64 // 1-minute load average before each run and at the end
	cpus       int
	memGiB     float64
	qemu, rev  string
}

// machine records what the numbers were measured on.
func (r *report) machine() {
	r.cpus = runtime.NumCPU()
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"), "%f", &kb)
		r.memGiB = kb / (1 << 20)
	}
	if out, err := exec.Command("qemu-system-x86_64", "--version").Output(); err == nil {
		r.qemu = strings.SplitN(string(out), "\n", 2)[0]
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		r.rev = strings.TrimSpace(string(out))
	}
}

func loadavg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	v, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return v
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// spread is "median (min–max)" of vs, formatted by f; "—" when empty.
func spread(vs []float64, f func(float64) string) string {
	if len(vs) == 0 {
		return "—"
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	if len(s) == 1 {
		return f(s[0])
	}
	return fmt.Sprintf("%s (%s–%s)", f(median(s)), f(s[0]), f(s[len(s)-1]))
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func secs(v float64) string { return fmt.Sprintf("%.2f s", v) }
func mibs(v float64) string { return fmt.Sprintf("%.1f", v/(1<<20)) }

func collect(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

// phaseNames are the swapout's phases in order (experiment.Coordinator).
var phaseNames = []string{"pause", "network checkpoint", "save", "manifest+snapshot", "verify", "destroy"}

func (r *report) markdown() string {
	var b strings.Builder
	o := r.opts
	fmt.Fprintf(&b, "### bench/exp: %d MiB guests, %d runs per row, %s – %s UTC\n\n",
		o.mem, o.repeat, r.start.UTC().Format("2006-01-02 15:04"), r.end.UTC().Format("15:04"))
	fmt.Fprintf(&b, "Command: `go run ./bench/exp %s` (commit %s). Machine: %d CPUs, %.0f GiB, %s, TCG. ",
		strings.Join(r.args, " "), orDash(r.rev), r.cpus, r.memGiB, orDash(r.qemu))
	ld := append([]float64(nil), r.load...)
	sort.Float64s(ld)
	if len(ld) > 0 {
		fmt.Fprintf(&b, "1-minute load average before the runs: median %.1f, %.1f–%.1f. ", median(ld), ld[0], ld[len(ld)-1])
	}
	b.WriteString("Store: **cold** — a fresh embedded casfs store and mount per run, so every swapout is the experiment's first " +
		"(nothing to deduplicate against but itself); swapin reads the snapshot back through the same mount right after " +
		"(not remounted, guest page caches not dropped). All nodes on one in-process agent, one LAN. " +
		"Parallel: every node saved at once (the default); sequential: `Coordinator.Sequential` and `agent.Config.SaveConcurrency = 1`, " +
		"one node after another. Runs alternate parallel/sequential (ABBA).\n\n")
	b.WriteString("| nodes | save | runs | downtime | save phase | swapin | saved/node MiB | uploaded/node MiB |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, n := range o.sizes {
		for _, m := range modes {
			c := cell{n, m.name}
			ss := r.samples[c]
			runs := strconv.Itoa(len(ss))
			if r.failed[c] > 0 {
				runs += fmt.Sprintf(" (%d failed)", r.failed[c])
			}
			fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s |\n", n, m.name, runs,
				spread(collect(ss, func(s sample) float64 { return s.Downtime.Seconds() }), secs),
				spread(collect(ss, func(s sample) float64 { return s.Phases["save"].Seconds() }), secs),
				spread(collect(ss, func(s sample) float64 { return s.Swapin.Seconds() }), secs),
				spread(collect(ss, func(s sample) float64 { return s.Saved }), mibs),
				spread(collect(ss, func(s sample) float64 { return s.Uploaded }), mibs))
		}
	}
	b.WriteString("\nSwapout phases, medians (downtime is pause through destroy):\n\n")
	b.WriteString("| nodes | save | " + strings.Join(phaseNames, " | ") + " |\n")
	b.WriteString("|---|---|" + strings.Repeat("---|", len(phaseNames)) + "\n")
	for _, n := range o.sizes {
		for _, m := range modes {
			ss := r.samples[cell{n, m.name}]
			fmt.Fprintf(&b, "| %d | %s |", n, m.name)
			for _, p := range phaseNames {
				v := collect(ss, func(s sample) float64 { return s.Phases[p].Seconds() })
				if len(v) == 0 {
					b.WriteString(" — |")
					continue
				}
				sort.Float64s(v)
				fmt.Fprintf(&b, " %.2f s |", median(v))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\nSequential over parallel, ratio of medians:\n\n| nodes | downtime | save phase | swapin |\n|---|---|---|---|\n")
	for _, n := range o.sizes {
		par, seq := r.samples[cell{n, "parallel"}], r.samples[cell{n, "sequential"}]
		ratio := func(f func(sample) float64) string {
			p, q := collect(par, f), collect(seq, f)
			if len(p) == 0 || len(q) == 0 {
				return "—"
			}
			sort.Float64s(p)
			sort.Float64s(q)
			return fmt.Sprintf("%.2f×", median(q)/median(p))
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s |\n", n,
			ratio(func(s sample) float64 { return s.Downtime.Seconds() }),
			ratio(func(s sample) float64 { return s.Phases["save"].Seconds() }),
			ratio(func(s sample) float64 { return s.Swapin.Seconds() }))
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}
