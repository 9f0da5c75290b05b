// Command casfs mounts the stasis content-addressed filesystem and manages
// mounts: mount (embedded stores or a metad daemon), unmount, stats,
// snapshot. Each subcommand lives in its own file: an options struct, its
// flags, and a runX function.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:   "casfs",
	Short: "The stasis content-addressed FUSE filesystem",
	Long: `casfs is a POSIX filesystem whose files are cut into chunks, deduplicated by
hash, compressed and stored in blockd, with metadata in metad. Every directory
has a virtual .snapshots directory: mkdir in it takes a read-only snapshot.`,
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "casfs:", err)
		os.Exit(1)
	}
}
