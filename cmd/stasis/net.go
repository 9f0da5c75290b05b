package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"stasis/vlan"
)

// netOptions are the flags of `stasis net up|down|show`.
type netOptions struct {
	// host selects the topology's nodes on this machine ("" = nodes
	// without a host).
	host string
	// parallelism is how many namespaces are created at once (0 = CPUs).
	parallelism int
	// experiment names the experiment for down when no topology is given.
	experiment string
	// planOnly makes show print the plan without reading the system.
	planOnly bool
	jsonOut  bool
	verbose  bool
	out      io.Writer
}

func (o *netOptions) logger() *slog.Logger {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func (o *netOptions) applier() (*vlan.Applier, error) {
	return vlan.NewApplier(vlan.Config{Logger: o.logger(), Parallelism: o.parallelism})
}

func (o *netOptions) plan(path string) (*vlan.Plan, error) {
	topo, err := vlan.Load(path)
	if err != nil {
		return nil, err
	}
	return vlan.NewPlan(topo, o.host)
}

func init() {
	opts := &netOptions{}
	netCmd := &cobra.Command{
		Use:   "net",
		Short: "Build, inspect and tear down experiment networks",
		Long: `net realizes an experiment's topology (a JSON file: nodes, interfaces, LANs) on
this host: a switch namespace stx-EXP with a bridge per LAN, a namespace
stx-EXP-NODE per netns node joined by veth pairs, a tap per QEMU guest NIC,
and with the dot1q backend an 802.1Q subinterface of the trunk per LAN.
Needs root.`,
	}
	pf := netCmd.PersistentFlags()
	pf.StringVar(&opts.host, "host", "", "realize the nodes of this host (as named in the topology); empty selects nodes without a host")
	pf.BoolVar(&opts.jsonOut, "json", false, "print results as JSON")
	pf.BoolVarP(&opts.verbose, "verbose", "v", false, "log every step")

	upCmd := &cobra.Command{
		Use:   "up TOPOLOGY.json",
		Short: "Create (or repair) the experiment's network; applying twice changes nothing",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.out = cmd.OutOrStdout()
			return runNetUp(cmd.Context(), opts, args)
		},
	}
	upCmd.Flags().IntVar(&opts.parallelism, "parallelism", 0, "namespaces created at once (0: number of CPUs)")

	downCmd := &cobra.Command{
		Use:   "down [TOPOLOGY.json]",
		Short: "Remove everything of the experiment from this host, found by name",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.out = cmd.OutOrStdout()
			return runNetDown(cmd.Context(), opts, args)
		},
	}
	downCmd.Flags().StringVar(&opts.experiment, "experiment", "", "experiment to remove when the topology file is gone")

	showCmd := &cobra.Command{
		Use:   "show TOPOLOGY.json",
		Short: "Show the plan and which of its objects exist; exits non-zero if any is missing",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.out = cmd.OutOrStdout()
			return runNetShow(cmd.Context(), opts, args)
		},
	}
	showCmd.Flags().BoolVar(&opts.planOnly, "plan", false, "print the plan only, without reading the system (no root needed)")

	netCmd.AddCommand(upCmd, downCmd, showCmd)
	rootCmd.AddCommand(netCmd)
}

func runNetUp(ctx context.Context, opts *netOptions, args []string) error {
	p, err := opts.plan(args[0])
	if err != nil {
		return err
	}
	a, err := opts.applier()
	if err != nil {
		return err
	}
	start := time.Now()
	res, err := a.Up(ctx, p)
	if err != nil {
		return fmt.Errorf("net up %s: %w", p.Experiment, err)
	}
	return printResult(opts, "up", p.Experiment, res, time.Since(start))
}

func runNetDown(ctx context.Context, opts *netOptions, args []string) error {
	exp := opts.experiment
	switch {
	case len(args) == 1 && exp != "":
		return errors.New("net down: give a topology or --experiment, not both")
	case len(args) == 1:
		topo, err := vlan.Load(args[0])
		if err != nil {
			return err
		}
		exp = topo.Experiment
	case exp == "":
		return errors.New("net down: give a topology file or --experiment")
	}
	a, err := opts.applier()
	if err != nil {
		return err
	}
	start := time.Now()
	res, err := a.Down(ctx, exp)
	if err != nil {
		return fmt.Errorf("net down %s: %w", exp, err)
	}
	return printResult(opts, "down", exp, res, time.Since(start))
}

func runNetShow(ctx context.Context, opts *netOptions, args []string) error {
	p, err := opts.plan(args[0])
	if err != nil {
		return err
	}
	if opts.planOnly {
		if opts.jsonOut {
			return writeJSON(opts.out, p)
		}
		_, err := io.WriteString(opts.out, p.String())
		return err
	}
	a, err := opts.applier()
	if err != nil {
		return err
	}
	st, err := a.Show(ctx, p)
	if err != nil {
		return fmt.Errorf("net show %s: %w", p.Experiment, err)
	}
	if opts.jsonOut {
		err = writeJSON(opts.out, st)
	} else {
		err = st.WriteTable(opts.out)
	}
	if err != nil {
		return err
	}
	if n := st.Missing(); n > 0 {
		return fmt.Errorf("net show %s: %d of %d objects missing or wrong", p.Experiment, n, len(st.Objects))
	}
	return nil
}

func printResult(opts *netOptions, verb, exp string, res *vlan.Result, took time.Duration) error {
	if opts.jsonOut {
		return writeJSON(opts.out, struct {
			Experiment string        `json:"experiment"`
			Took       time.Duration `json:"took"`
			*vlan.Result
		}{exp, took, res})
	}
	if verb == "down" {
		_, err := fmt.Fprintf(opts.out, "%s: down in %v: removed %d namespaces\n", exp, took.Round(time.Microsecond), res.Removed.Namespaces)
		return err
	}
	fmt.Fprintf(opts.out, "%s: up in %v: created %s; corrected %s; %d netlink round trips\n",
		exp, took.Round(time.Microsecond), res.Created, res.Changed, res.NetlinkBatches)
	for _, ph := range res.Phases {
		fmt.Fprintf(opts.out, "  %-10s %v\n", ph.Name, ph.Duration.Round(time.Microsecond))
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
