package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"stasis/cas"
)

type keygenOptions struct {
	id uint32
}

func newKeygenCmd() *cobra.Command {
	var o keygenOptions
	cmd := &cobra.Command{
		Use:   "keygen FILE",
		Short: "Write a new token secret file (mode 0600) shared by metad and blockd",
		Long: `keygen writes a fresh random token key to FILE as "KEYID HEX64". It refuses
to overwrite an existing file. To rotate, put a new key line first in the
file (it signs) and keep the old one until its tokens have expired.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runKeygen(o, args)
		},
	}
	cmd.Flags().Uint32Var(&o.id, "id", 1, "key id of the new key")
	return cmd
}

func runKeygen(o keygenOptions, args []string) error {
	f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := f.Write(cas.NewSecretFile(o.id)); err != nil {
		f.Close()
		return fmt.Errorf("keygen: %w", err)
	}
	return f.Close()
}
