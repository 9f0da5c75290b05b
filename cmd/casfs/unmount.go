package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

type unmountOptions struct {
	Lazy bool
}

func init() {
	o := &unmountOptions{}
	cmd := &cobra.Command{
		Use:   "unmount MOUNTPOINT",
		Short: "Unmount casfs (the mount process then flushes and exits)",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return runUnmount(cmd.Context(), o, args) },
	}
	cmd.Flags().BoolVarP(&o.Lazy, "lazy", "l", false, "detach now even if busy")
	rootCmd.AddCommand(cmd)
}

func runUnmount(ctx context.Context, o *unmountOptions, args []string) error {
	mnt := args[0]
	flags := 0
	if o.Lazy {
		flags = unix.MNT_DETACH
	}
	err := unix.Unmount(mnt, flags)
	if errors.Is(err, unix.EBUSY) {
		fmt.Fprintf(os.Stderr, "casfs: %s is busy (files open or a process has its cwd there); detaching lazily: it disappears now and is released when the last file is closed\n", mnt)
		err = unix.Unmount(mnt, unix.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	return nil
}
