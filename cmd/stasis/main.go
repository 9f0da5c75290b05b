// Command stasis drives whole experiments: swapping VMs out to casfs and
// back in (swapout, swapin) and building experiment networks (net).
//
// Each subcommand lives in its own file and registers itself on rootCmd in
// an init function: an options struct, its flags, and a runX function.
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
	Use:   "stasis",
	Short: "Stateful, transparent swapout for network testbeds",
	Long: `stasis pauses an experiment's virtual machines, saves their memory and disk
deltas into casfs, checkpoints the network, and later resumes them in virtual time.`,
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "stasis:", err)
		os.Exit(1)
	}
}
