package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"stasis/casfs/fusefs"
)

type statsOptions struct{}

func init() {
	o := &statsOptions{}
	cmd := &cobra.Command{
		Use:   "stats MOUNTPOINT",
		Short: "Print store and mount statistics as JSON",
		Long: `Prints logical bytes, bytes stored (raw and compressed), chunks, holes, the
dedup and compression ratios, and this mount's bytes uploaded and skipped as
duplicates.

stored_raw counts the distinct chunks files and snapshots reference;
stored_encoded and block_chunks are what the block stores hold (compressed),
including chunks not yet garbage-collected. blocks_unreported, when present,
is the number of block servers that did not answer: stored_encoded then lacks
their share and compression_ratio is left out.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runStats(cmd.Context(), o, args) },
	}
	rootCmd.AddCommand(cmd)
}

func runStats(ctx context.Context, o *statsOptions, args []string) error {
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(args[0], fusefs.StatsXattr, buf)
	if err != nil {
		return fmt.Errorf("%s: reading %s (is it a casfs mount root?): %w", args[0], fusefs.StatsXattr, err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, buf[:n], "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = os.Stdout.Write(out.Bytes())
	return err
}
