package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"stasis/metad"
)

type fsckOptions struct {
	data        string
	repair      bool
	maxProblems int
}

// fsckFailed makes main exit with status 2: the store is inconsistent.
type fsckFailed struct{ problems int }

func (e *fsckFailed) Error() string { return fmt.Sprintf("fsck found %d problems", e.problems) }

func newFsckCmd() *cobra.Command {
	var o fsckOptions
	cmd := &cobra.Command{
		Use:   "fsck --data DIR [--repair]",
		Short: "Check the consistency of a stopped metad store",
		Long: `fsck recomputes manifest and chunk reference counts from the inodes of the live
tree and of every snapshot and compares them with the stored counts; it checks
directory entries, link counts, parents, file sizes, the dead-chunk set and the
stats counters. metad must not be running on DIR (badger locks it).

Orphans (files unlinked while open when metad stopped) are reported but are
not problems: metad reclaims them when it starts. --repair rewrites reference
counts and stats from the recomputed values and reclaims orphans; other damage
is only reported. Exit status: 0 clean, 2 problems remain, 1 fsck failed.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFsck(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.data, "data", "", "metad's data directory (required)")
	f.BoolVar(&o.repair, "repair", false, "rewrite reference counts and stats, reclaim orphans")
	f.IntVar(&o.maxProblems, "max-problems", 1000, "list at most this many problems")
	return cmd
}

func runFsck(ctx context.Context, o fsckOptions) error {
	if o.data == "" {
		return errors.New("--data DIR is required")
	}
	if _, err := os.Stat(o.data); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	st, err := metad.OpenBadgerStore(o.data, metad.BadgerOptions{SyncWrites: true, MemTableSize: 64 << 20})
	if err != nil {
		return err
	}
	defer st.Close()
	rep, err := metad.Fsck(ctx, st, metad.FsckOptions{Repair: o.repair, MaxProblems: o.maxProblems})
	if err != nil {
		return err
	}
	fmt.Println(rep)
	if err := st.Close(); err != nil {
		return err
	}
	if rep.ProblemCount > 0 {
		return &fsckFailed{rep.ProblemCount}
	}
	return nil
}
