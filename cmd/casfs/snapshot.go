package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"stasis/casfs/fusefs"
)

type snapshotOptions struct {
	Delete bool
	List   bool
}

func init() {
	o := &snapshotOptions{}
	cmd := &cobra.Command{
		Use:   "snapshot DIR [NAME]",
		Short: "Take (or list, or delete) a read-only snapshot of a casfs directory",
		Long: `casfs snapshot DIR NAME is mkdir DIR/.snapshots/NAME: it commits this
mount's open writes and snapshots DIR. The snapshot is browsable, read-only,
at DIR/.snapshots/NAME. --list prints the snapshots, --delete removes one.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error { return runSnapshot(cmd.Context(), o, args) },
	}
	cmd.Flags().BoolVar(&o.Delete, "delete", false, "delete snapshot NAME")
	cmd.Flags().BoolVar(&o.List, "list", false, "list the snapshots of DIR")
	rootCmd.AddCommand(cmd)
}

func runSnapshot(ctx context.Context, o *snapshotOptions, args []string) error {
	snaps := filepath.Join(args[0], fusefs.SnapshotsDir)
	if o.List {
		ents, err := os.ReadDir(snaps)
		if err != nil {
			return err
		}
		for _, e := range ents {
			fmt.Println(e.Name())
		}
		return nil
	}
	if len(args) != 2 {
		return fmt.Errorf("snapshot needs DIR and NAME")
	}
	path := filepath.Join(snaps, args[1])
	if o.Delete {
		return os.Remove(path)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		return err
	}
	fmt.Println(path)
	return nil
}
