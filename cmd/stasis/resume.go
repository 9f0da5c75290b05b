package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"stasis/qemuhook"
)

// resumeOptions are the flags of `stasis resume`.
type resumeOptions struct {
	qmp     string
	jsonOut bool
	verbose bool
	out     io.Writer
	errOut  io.Writer
}

func (o *resumeOptions) logger() *slog.Logger {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(o.errOut, &slog.HandlerOptions{Level: level}))
}

// resumableStates are the QEMU run states resume continues: paused, and
// paused after a completed save ("postmigrate": swapout --keep, or a
// swapout that failed after saving).
var resumableStates = map[string]bool{"paused": true, "postmigrate": true}

func init() {
	opts := &resumeOptions{}
	cmd := &cobra.Command{
		Use:   "resume --qmp SOCK",
		Short: "Continue a paused QEMU VM (after swapout --keep or a failed swapout)",
		Long: `resume continues the paused QEMU VM behind the QMP socket SOCK and reports
its run state before and after. A VM is left paused by "stasis swapout --keep"
and by a swapout that failed after pausing it (the error says so); resume is
how it runs on. It waits for a failed save to finish cleaning up first.

resume refuses a VM that is not paused ("paused", or "postmigrate" after a
save): it never starts a VM that was not running before.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.out, opts.errOut = cmd.OutOrStdout(), cmd.ErrOrStderr()
			return runResume(cmd.Context(), opts, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.qmp, "qmp", "", "QEMU's QMP unix socket")
	f.BoolVar(&opts.jsonOut, "json", false, "print the summary as JSON")
	f.BoolVarP(&opts.verbose, "verbose", "v", false, "log every step")
	rootCmd.AddCommand(cmd)
}

// resumeSummary is what resume reports.
type resumeSummary struct {
	Op     string `json:"op"`
	QMP    string `json:"qmp"`
	Pid    int    `json:"pid"`
	Before string `json:"status_before"`
	After  string `json:"status_after"`
}

func runResume(ctx context.Context, opts *resumeOptions, _ []string) error {
	if opts.qmp == "" {
		return errors.New("resume: --qmp SOCK is required")
	}
	m, err := qemuhook.Connect(ctx, qemuhook.Config{QMP: opts.qmp, Logger: opts.logger()})
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	defer m.Close()
	sum := resumeSummary{Op: "resume", QMP: opts.qmp, Pid: m.Pid()}
	if sum.Before, err = m.Status(ctx); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if !resumableStates[sum.Before] {
		return fmt.Errorf("resume: the VM behind %s (pid %d) is %q, not paused", opts.qmp, sum.Pid, sum.Before)
	}
	if err := m.Resume(ctx); err != nil {
		return fmt.Errorf("resume: the VM behind %s (pid %d) was %q: %w", opts.qmp, sum.Pid, sum.Before, err)
	}
	if sum.After, err = m.Status(ctx); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if sum.After != "running" {
		return fmt.Errorf("resume: QEMU accepted cont but the VM behind %s (pid %d) is %q", opts.qmp, sum.Pid, sum.After)
	}
	if opts.jsonOut {
		enc := json.NewEncoder(opts.out)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	fmt.Fprintf(opts.out, "resume %s: pid %d, %s -> %s\n", sum.QMP, sum.Pid, sum.Before, sum.After)
	return nil
}
