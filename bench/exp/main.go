// Command exp measures whole-experiment swapout and swapin: experiments of
// 1, 2 and 4 QEMU test guests on one LAN, all on one in-process agent,
// each on a fresh embedded casfs store, saved with the nodes in parallel
// (the default) and one after another. It prints a markdown table of
// medians (min–max) and can append it to a results file. `make bench-exp`
// runs it.
//
// Each run: mount casfs (`casfs mount --data`), boot the experiment, wait
// for every guest's second console tick, read casfs's stats, swap out,
// read the stats again, swap in, wait for a tick from every guest, take
// everything down. Parallel and sequential runs alternate (ABBA) so load
// from other jobs falls on both.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"stasis/internal/testguest"
)

type options struct {
	sizes   []int
	mem     int
	repeat  int
	casfs   string
	out     string
	work    string
	timeout time.Duration
}

// mode is how the nodes are saved.
type mode struct {
	name       string
	sequential bool
}

var modes = []mode{{"parallel", false}, {"sequential", true}}

func main() {
	var o options
	sizes := flag.String("sizes", "1,2,4", "comma-separated experiment sizes (nodes)")
	flag.IntVar(&o.mem, "mem", 128, "RAM of each guest, MiB")
	flag.IntVar(&o.repeat, "repeat", 3, "runs per size and mode (the table shows median and min–max)")
	flag.StringVar(&o.casfs, "casfs", "bin/casfs", "casfs binary (go build -o bin/ ./cmd/...)")
	flag.StringVar(&o.out, "out", "", "markdown file to append the table to (default: stdout only)")
	flag.StringVar(&o.work, "work", "/var/tmp", "directory for each run's casfs store and mount (a fresh temporary directory per run, removed after it)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "limit for one run (boot, swapout, swapin, teardown)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: go run ./bench/exp [flags]\n\nMeasures experiment swapout downtime and swapin time with nodes saved in parallel\nand one after another, on QEMU test guests and a fresh casfs store per run.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "exp: -sizes: %q is not a node count\n", f)
			os.Exit(2)
		}
		o.sizes = append(o.sizes, n)
	}
	if o.repeat < 1 || o.mem < 16 {
		fmt.Fprintln(os.Stderr, "exp: -repeat must be at least 1 and -mem at least 16")
		os.Exit(2)
	}
	// SIGINT or SIGTERM cancels the run in progress, which then takes its
	// guests, mount and directories down (within about a minute); further
	// signals are ignored until then, so nothing is left behind. SIGKILL
	// would leave the QEMUs and the mount.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	finished := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "exp: interrupted: taking the run down")
		case <-finished:
		}
	}()
	err := run(ctx, o, os.Args[1:])
	close(finished)
	if err != nil {
		fmt.Fprintln(os.Stderr, "exp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, args []string) error {
	f, err := testguest.Find()
	if err != nil {
		return err
	}
	if _, err := os.Stat(o.casfs); err != nil {
		return fmt.Errorf("casfs binary: %w (go build -o bin/ ./cmd/...)", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rep := &report{opts: o, args: args, start: time.Now(), samples: map[cell][]sample{}, failed: map[cell]int{}}
	rep.machine()
	for _, n := range o.sizes {
		for r := 0; r < o.repeat; r++ {
			order := modes
			if r%2 == 1 { // ABBA: each mode goes first equally often
				order = []mode{modes[1], modes[0]}
			}
			for _, m := range order {
				c := cell{n, m.name}
				rep.load = append(rep.load, loadavg())
				t0 := time.Now()
				s, err := runOnce(ctx, o, f, log, n, m.sequential)
				if ctx.Err() != nil {
					return fmt.Errorf("interrupted: %w", ctx.Err())
				}
				if err != nil {
					rep.failed[c]++
					fmt.Fprintf(os.Stderr, "exp: %d nodes, %s, run %d: FAILED after %v: %v\n", n, m.name, r+1, time.Since(t0).Round(time.Second), err)
					continue
				}
				rep.samples[c] = append(rep.samples[c], s)
				fmt.Fprintf(os.Stderr, "exp: %d nodes, %s, run %d: downtime %v (save %v), swapin %v, saved %s/node, uploaded %s/node [%v]\n",
					n, m.name, r+1, s.Downtime.Round(time.Millisecond), s.Phases["save"].Round(time.Millisecond), s.Swapin.Round(time.Millisecond),
					mib(s.Saved), mib(s.Uploaded), time.Since(t0).Round(time.Second))
			}
		}
	}
	rep.load = append(rep.load, loadavg())
	rep.end = time.Now()
	md := rep.markdown()
	fmt.Print(md)
	if o.out != "" {
		fh, err := os.OpenFile(o.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		if _, err := fh.WriteString("\n" + md); err != nil {
			fh.Close()
			return err
		}
		if err := fh.Close(); err != nil {
			return err
		}
	}
	total := 0
	for _, k := range rep.failed {
		total += k
	}
	if total > 0 {
		return fmt.Errorf("%d runs failed (see above); the table has the others", total)
	}
	return nil
}
