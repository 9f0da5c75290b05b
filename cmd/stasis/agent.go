package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"stasis/agent"
)

// agentOptions are the flags of `stasis agent`.
type agentOptions struct {
	name      string
	dir       string
	root      string
	socket    string
	trunkAddr string
	qemu      string
	saveConc  int
	verbose   bool
	errOut    io.Writer
}

func init() {
	host, _ := os.Hostname()
	opts := &agentOptions{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent: the experiments' VMs and switches on this host",
		Long: `agent runs the nodes of experiments placed on this host as QEMU guests and
one userspace switch per experiment (each guest NIC plugs into it through a
unix socket; experiment traffic never touches the host's network
namespace). stasis exp drives it over its HTTP API on a unix socket (mode
0600). It runs in the foreground; Ctrl-C or SIGTERM stops it.

Each experiment's switch runs in a process of its own ("stasis agent switch"),
like the VMs: stopping or restarting the agent ends neither, and an agent
started again on the same --dir re-adopts every experiment it finds there.
VMs it cannot re-adopt are listed when it starts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.errOut = cmd.ErrOrStderr()
			return runAgent(cmd.Context(), opts, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.name, "name", host, "this host's name in experiment placements")
	f.StringVar(&opts.dir, "dir", "/var/lib/stasis/agent", "run directory (QMP sockets, console logs, local disk overlays)")
	f.StringVar(&opts.root, "root", "", "the experiments directory on this host's casfs mount, e.g. /mnt/stasis/experiments (required: swapouts save there, swapins read there)")
	f.StringVar(&opts.socket, "socket", "/run/stasis/agent.sock", "unix socket of the agent's API")
	f.StringVar(&opts.trunkAddr, "trunk-addr", "127.0.0.1", "IP address the UDP trunks to other hosts' switches bind to")
	f.StringVar(&opts.qemu, "qemu", "qemu-system-x86_64", "QEMU binary")
	f.IntVar(&opts.saveConc, "save-concurrency", 0, "how many nodes of an experiment a swapout saves at once (0: all)")
	f.BoolVarP(&opts.verbose, "verbose", "v", false, "log every step")
	var swDir string
	sw := &cobra.Command{
		Use:    "switch --dir DIR",
		Short:  "One experiment's switch (started by the agent)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			return agent.RunSwitch(cmd.Context(), swDir, log)
		},
	}
	sw.Flags().StringVar(&swDir, "dir", "", "the switch's directory (switch.json, switch.sock)")
	cmd.AddCommand(sw)
	rootCmd.AddCommand(cmd)
}

func runAgent(ctx context.Context, opts *agentOptions, _ []string) error {
	level := slog.LevelInfo
	if opts.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(opts.errOut, &slog.HandlerOptions{Level: level}))
	if opts.root == "" {
		return fmt.Errorf("--root is required: the experiments directory on this host's casfs mount, e.g. --root /mnt/stasis/experiments")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{Name: opts.name, Dir: opts.dir, Root: opts.root, QEMU: opts.qemu, TrunkAddr: opts.trunkAddr, Logger: log,
		SwitchCommand: []string{exe, "agent", "switch"}, SaveConcurrency: opts.saveConc})
	if err != nil {
		return err
	}
	if ks := a.Experiments(); len(ks) > 0 {
		log.Info("re-adopted running experiments", "count", len(ks))
	}
	if orphans := a.Orphans(); len(orphans) > 0 {
		log.Warn("VMs of an earlier agent still run; this agent does not manage them (end them by hand)", "qmp", strings.Join(orphans, " "))
	}
	log.Info("agent serving", "name", opts.name, "socket", opts.socket, "dir", opts.dir)
	err = agent.Serve(ctx, a, opts.socket)
	if n := len(a.Experiments()); n > 0 {
		log.Info(fmt.Sprintf("stopping; %d experiments run on, for the next agent on %s to re-adopt", n, opts.dir))
	}
	a.Detach()
	return err
}
