package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"stasis/agent"
	"stasis/experiment"
)

// expOptions are the flags every `stasis exp` subcommand shares, and theirs.
type expOptions struct {
	agents     []string // NAME=SOCKET or SOCKET
	root       string
	state      string
	snapshot   string
	place      []string // NODE=HOST
	keepPaused bool
	paused     bool
	sequential bool
	noProgress bool
	jsonOut    bool
	verbose    bool
	out        io.Writer
	errOut     io.Writer
}

func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/stasis/exp"
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "stasis", "exp")
	}
	return ".stasis-exp"
}

func init() { rootCmd.AddCommand(newExpCmd()) }

// newExpCmd builds the exp command tree with its own options.
func newExpCmd() *cobra.Command {
	opts := &expOptions{}
	exp := &cobra.Command{
		Use:   "exp",
		Short: "Experiments as one unit: create, swap out, swap in, resume, take down",
		Long: `exp drives whole experiments (docs/EXPERIMENT.md) through the host agents
("stasis agent", one per host). An experiment's file names its nodes (QEMU
guests), LANs and, optionally, hosts; "exp up FILE" boots it. "exp swapout"
pauses every node at one instant, checkpoints the network consistently,
saves every node in parallel into ROOT/PROJECT/NAME on casfs, takes a casfs
snapshot and only then ends the VMs; "exp swapin" brings it back, on the
same or other hosts, with every node resumed together in virtual time.

Experiments are named PROJECT/NAME. Agents are given with --agent NAME=SOCKET
(repeat it for several hosts); the default is the local agent's socket.`,
	}
	pf := exp.PersistentFlags()
	pf.StringArrayVar(&opts.agents, "agent", []string{"/run/stasis/agent.sock"}, "a host agent's API socket, NAME=SOCKET or SOCKET (the agent names itself); repeat for several hosts")
	pf.StringVar(&opts.root, "root", "", "where experiments are saved: the experiments directory on a casfs mount, e.g. /mnt/stasis/experiments (required by swapout and swapin)")
	pf.StringVar(&opts.state, "state", defaultStateDir(), "local directory of the experiments' records, history and locks")
	pf.BoolVar(&opts.jsonOut, "json", false, "print results as JSON")
	pf.BoolVarP(&opts.verbose, "verbose", "v", false, "log every step")
	pf.BoolVar(&opts.noProgress, "no-progress", false, "no progress bar")

	sub := func(use, short, long string, args cobra.PositionalArgs, run func(context.Context, *expOptions, []string) error) *cobra.Command {
		c := &cobra.Command{Use: use, Short: short, Long: long, Args: args,
			RunE: func(cmd *cobra.Command, a []string) error {
				opts.out, opts.errOut = cmd.OutOrStdout(), cmd.ErrOrStderr()
				return run(cmd.Context(), opts, a)
			}}
		exp.AddCommand(c)
		return c
	}
	sub("validate FILE", "Check an experiment file and print every problem", "", cobra.ExactArgs(1), runExpValidate)
	up := sub("up FILE", "Create an experiment from its file and boot it",
		`up reads FILE, places every node on a host (the file's host, --place, or the
least loaded agent), builds each host's switch and boots the nodes.`, cobra.ExactArgs(1), runExpUp)
	up.Flags().StringArrayVar(&opts.place, "place", nil, "NODE=HOST: run NODE on HOST (repeatable; overrides the file)")
	out := sub("swapout PROJECT/NAME", "Save the whole experiment at one consistent cut and end its VMs",
		`swapout first runs every check that can fail without pausing anything. It
then pauses every node at one instant (the network's in-flight frames are
logged by the switches), saves every node in parallel into
ROOT/PROJECT/NAME/NODE, writes the network logs and experiment.json last,
takes the casfs snapshot ROOT/PROJECT/NAME/.snapshots/SNAPSHOT, checks it, and
only then ends the VMs and the network. If anything fails before the
snapshot is whole, every node runs on (or stays paused with --keep-paused)
and the error names the node and the step.`, cobra.ExactArgs(1), runExpSwapout)
	out.Flags().StringVar(&opts.snapshot, "snapshot", "", "snapshot name (default: the pause time, UTC)")
	out.Flags().BoolVar(&opts.keepPaused, "keep-paused", false, "on failure leave every node paused instead of resuming (then: exp resume)")
	out.Flags().BoolVar(&opts.sequential, "sequential", false, "save one host after another (for comparison); each agent saves its own nodes as its --save-concurrency says")
	in := sub("swapin PROJECT/NAME", "Restore the experiment from a snapshot, on the same or other hosts",
		`swapin restores every node paused from the snapshot (default: the last one),
rebuilds each host's switch with the frames that were in flight, and resumes
all nodes together. --place moves nodes to other hosts.`, cobra.ExactArgs(1), runExpSwapin)
	in.Flags().StringVar(&opts.snapshot, "snapshot", "", "snapshot to restore (default: the last one)")
	in.Flags().StringArrayVar(&opts.place, "place", nil, "NODE=HOST: restore NODE on HOST (repeatable)")
	in.Flags().BoolVar(&opts.paused, "paused", false, "leave every node paused (then: exp resume)")
	sub("resume PROJECT/NAME", "Continue an experiment whose nodes were left paused", "", cobra.ExactArgs(1), runExpResume)
	sub("down PROJECT/NAME", "End the experiment's VMs and network and forget it (its snapshots stay)", "", cobra.ExactArgs(1), runExpDown)
	sub("status PROJECT/NAME", "Show the experiment's state and every node's", "", cobra.ExactArgs(1), runExpStatus)
	sub("ls", "List the experiments", "", cobra.NoArgs, runExpLs)
	sub("history PROJECT/NAME", "Show every state change of the experiment with its reason", "", cobra.ExactArgs(1), runExpHistory)
	return exp
}

func (o *expOptions) logger() *slog.Logger {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(o.errOut, &slog.HandlerOptions{Level: level}))
}

// coordinator connects to the agents.
func (o *expOptions) coordinator(ctx context.Context, needRoot bool) (*experiment.Coordinator, error) {
	if needRoot && o.root == "" {
		return nil, errors.New("--root is required: the experiments directory on a casfs mount, e.g. --root /mnt/stasis/experiments")
	}
	c := &experiment.Coordinator{Hosts: map[string]experiment.Host{}, Root: o.root, State: o.state, Logger: o.logger()}
	for _, a := range o.agents {
		name, sock, ok := strings.Cut(a, "=")
		if !ok {
			name, sock = "", a
		}
		cl, err := agent.Dial(ctx, sock)
		if err != nil {
			return nil, err
		}
		if name == "" {
			name = cl.Name()
		}
		if name != cl.Name() {
			return nil, fmt.Errorf("--agent %s: the agent on %s is named %q", a, sock, cl.Name())
		}
		c.Hosts[name] = cl
	}
	return c, nil
}

// experiment names the experiment of a command and connects to the agents.
func (o *expOptions) experiment(ctx context.Context, name string, needRoot bool) (experiment.Key, *experiment.Coordinator, error) {
	k, err := parseKey(name)
	if err != nil {
		return k, nil, err
	}
	c, err := o.coordinator(ctx, needRoot)
	return k, c, err
}

func parseKey(s string) (experiment.Key, error) {
	p, n, ok := strings.Cut(s, "/")
	if !ok || p == "" || n == "" || strings.Contains(n, "/") {
		return experiment.Key{}, fmt.Errorf("experiment %q: want PROJECT/NAME", s)
	}
	return experiment.Key{Project: p, Name: n}, nil
}

func parsePlace(place []string) (map[string]string, error) {
	out := map[string]string{}
	for _, p := range place {
		n, h, ok := strings.Cut(p, "=")
		if !ok || n == "" || h == "" {
			return nil, fmt.Errorf("--place %q: want NODE=HOST", p)
		}
		out[n] = h
	}
	return out, nil
}

func runExpValidate(_ context.Context, o *expOptions, args []string) error {
	s, err := experiment.Load(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(o.out, "%s: experiment %s/%s, %d nodes, %d LANs: valid\n", args[0], s.Project, s.Name, len(s.Nodes), len(s.LANs))
	return nil
}

func runExpUp(ctx context.Context, o *expOptions, args []string) error {
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	s, err := experiment.Load(args[0])
	if err != nil {
		return err
	}
	// Paths in the file are relative to it: give the agents absolute ones.
	b, err = absolutePaths(s, b)
	if err != nil {
		return err
	}
	pl, err := parsePlace(o.place)
	if err != nil {
		return err
	}
	for _, l := range s.LANs {
		if l.Rate != 0 {
			fmt.Fprintf(o.errOut, "note: LAN %s: rate %s is recorded but not shaped (the userspace switch does not limit rates yet)\n", l.Name, l.Rate)
		}
	}
	c, err := o.coordinator(ctx, false)
	if err != nil {
		return err
	}
	t0 := time.Now()
	r, err := c.Up(ctx, b, s, pl)
	if err != nil {
		return err
	}
	if o.jsonOut {
		return writeJSON(o.out, r)
	}
	fmt.Fprintf(o.out, "experiment %s is up: %d nodes in %v\n", r.Key, len(r.Placement), time.Since(t0).Round(time.Millisecond))
	printPlacement(o.out, r.Placement)
	return nil
}

// absolutePaths rewrites the spec with every node's paths made absolute
// (relative to the file), so agents with other working directories read
// the same files.
func absolutePaths(s *experiment.Spec, orig []byte) ([]byte, error) {
	changed := false
	for i := range s.Nodes {
		n := &s.Nodes[i]
		e := s.Effective(n)
		for _, f := range []struct {
			p *string
			v string
		}{{&n.Kernel, e.Kernel}, {&n.Initrd, e.Initrd}, {&n.Image, e.Image}} {
			if *f.p != f.v || (*f.p == "" && f.v != "") {
				*f.p = f.v
				changed = true
			}
		}
	}
	if !changed {
		return orig, nil
	}
	s.Defaults.Kernel, s.Defaults.Initrd, s.Defaults.Image = "", "", ""
	return s.Marshal()
}

func printPlacement(w io.Writer, pl map[string]string) {
	nodes := make([]string, 0, len(pl))
	for n := range pl {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tHOST")
	for _, n := range nodes {
		fmt.Fprintf(tw, "  %s\t%s\n", n, pl[n])
	}
	tw.Flush()
}

// expProgress draws one bar over every node's saved bytes.
type expProgress struct {
	mu    sync.Mutex
	w     io.Writer
	bar   *progressbar.ProgressBar
	total map[string]int64
	done  map[string]int64
}

func (p *expProgress) update(node, phase string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil {
		p.bar = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(p.w), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("saving"), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
		p.total, p.done = map[string]int64{}, map[string]int64{}
	}
	key := node + "\x00" + phase
	p.done[key] = done
	var sum int64
	for _, d := range p.done {
		sum += d
	}
	p.bar.Describe(fmt.Sprintf("%s: %s", node, phase))
	p.bar.Set64(sum)
}

func (p *expProgress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
	}
}

func runExpSwapout(ctx context.Context, o *expOptions, args []string) error {
	k, c, err := o.experiment(ctx, args[0], true)
	if err != nil {
		return err
	}
	c.Sequential = o.sequential
	var prog *expProgress
	if !o.noProgress && !o.jsonOut && isTerminal(o.errOut) {
		prog = &expProgress{w: o.errOut}
		c.Progress = prog.update
	}
	before, haveStats := casfsStats(o.root)
	res, err := c.Swapout(ctx, k, experiment.SwapoutOptions{Snapshot: o.snapshot, KeepPaused: o.keepPaused})
	if prog != nil {
		prog.finish()
	}
	if err != nil {
		return err
	}
	after, _ := casfsStats(o.root)
	if o.jsonOut {
		return writeJSON(o.out, res)
	}
	var total int64
	tw := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(o.out, "experiment %s swapped out: snapshot %s (%s)\n", k, res.Snapshot, res.Dir)
	fmt.Fprintln(tw, "  NODE\tSAVED\tSAVE\tVERIFY")
	for _, n := range res.Nodes {
		total += n.Bytes
		fmt.Fprintf(tw, "  %s\t%s\t%v\t%v\n", n.Node, humanBytes(n.Bytes), n.Save.Round(time.Millisecond), n.Verify.Round(time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintf(o.out, "downtime %v (first pause until every VM ended); %s saved", res.Downtime.Round(time.Millisecond), humanBytes(total))
	if haveStats {
		up := int64(after.Mount.BytesUploaded - before.Mount.BytesUploaded)
		dup := int64(after.Mount.BytesSkippedDup - before.Mount.BytesSkippedDup)
		fmt.Fprintf(o.out, ", %s uploaded, %s skipped as duplicates", humanBytes(up), humanBytes(dup))
	}
	fmt.Fprintln(o.out)
	printPhases(o.out, res.Phases)
	return nil
}

func printPhases(w io.Writer, ps []experiment.Phase) {
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s %v", p.Name, p.Took.Round(time.Millisecond)))
	}
	fmt.Fprintf(w, "phases: %s\n", strings.Join(parts, ", "))
}

func runExpSwapin(ctx context.Context, o *expOptions, args []string) error {
	pl, err := parsePlace(o.place) // a bad flag fails before any agent is asked
	if err != nil {
		return err
	}
	k, c, err := o.experiment(ctx, args[0], true)
	if err != nil {
		return err
	}
	res, err := c.Swapin(ctx, k, experiment.SwapinOptions{Snapshot: o.snapshot, Placement: pl, Paused: o.paused})
	if err != nil {
		return err
	}
	if o.jsonOut {
		return writeJSON(o.out, res)
	}
	state := "running"
	if o.paused {
		state = "paused"
	}
	fmt.Fprintf(o.out, "experiment %s swapped in from snapshot %s in %v, %s\n", k, res.Snapshot, res.Took.Round(time.Millisecond), state)
	printPlacement(o.out, res.Placement)
	printPhases(o.out, res.Phases)
	return nil
}

func runExpResume(ctx context.Context, o *expOptions, args []string) error {
	k, c, err := o.experiment(ctx, args[0], false)
	if err != nil {
		return err
	}
	if err := c.Resume(ctx, k); err != nil {
		return err
	}
	fmt.Fprintf(o.out, "experiment %s: every node continued\n", k)
	return nil
}

func runExpDown(ctx context.Context, o *expOptions, args []string) error {
	k, c, err := o.experiment(ctx, args[0], false)
	if err != nil {
		return err
	}
	if err := c.Down(ctx, k); err != nil {
		return err
	}
	fmt.Fprintf(o.out, "experiment %s is down (its snapshots stay)\n", k)
	return nil
}

func runExpStatus(ctx context.Context, o *expOptions, args []string) error {
	k, c, err := o.experiment(ctx, args[0], false)
	if err != nil {
		return err
	}
	r, nodes, serr := c.Status(ctx, k)
	if r == nil {
		return serr
	}
	if o.jsonOut {
		return writeJSON(o.out, map[string]any{"record": r, "nodes": nodes})
	}
	fmt.Fprintf(o.out, "experiment %s: %s (epoch %d", k, r.State, r.Epoch)
	if r.Snapshot != "" {
		fmt.Fprintf(o.out, ", last snapshot %s", r.Snapshot)
	}
	fmt.Fprintf(o.out, ", updated %s)\n", r.Updated.Local().Format(time.DateTime))
	if r.LastError != "" {
		fmt.Fprintf(o.out, "last error: %s\n", r.LastError)
	}
	if len(nodes) > 0 {
		tw := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NODE\tHOST\tSTATE\tPID")
		for _, n := range nodes {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\n", n.Node, n.Host, n.State, n.Pid)
		}
		tw.Flush()
	} else if r.State != experiment.StateSwappedOut {
		printPlacement(o.out, r.Placement)
	}
	if serr != nil {
		fmt.Fprintf(o.out, "agents: %v\n", serr)
	}
	return nil
}

func runExpLs(ctx context.Context, o *expOptions, _ []string) error {
	c := &experiment.Coordinator{State: o.state}
	rs, err := c.List()
	if err != nil {
		return err
	}
	if o.jsonOut {
		return writeJSON(o.out, rs)
	}
	tw := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EXPERIMENT\tSTATE\tNODES\tSNAPSHOT\tUPDATED")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", r.Key, r.State, len(r.Placement), r.Snapshot, r.Updated.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func runExpHistory(ctx context.Context, o *expOptions, args []string) error {
	k, err := parseKey(args[0])
	if err != nil {
		return err
	}
	c := &experiment.Coordinator{State: o.state}
	h, err := c.History(k)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("experiment %s has no history in %s", k, o.state)
	}
	if err != nil {
		return err
	}
	if o.jsonOut {
		return writeJSON(o.out, h)
	}
	tw := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tOP\tFROM\tTO\tREASON")
	for _, e := range h {
		from := e.From
		if from == "" {
			from = "-"
		}
		to := e.To
		if to == "" {
			to = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), e.Op, from, to, e.Reason)
	}
	return tw.Flush()
}

// keyOf is parseKey for a name known to be good.
func keyOf(s string) experiment.Key { k, _ := parseKey(s); return k }

// isTerminal reports whether w is a terminal (a progress bar redraws in
// place there; in a log it would print every frame).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
