package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/storage/arbiter"
)

func newArbiterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "arbiter",
		Short: "Inspect the arbiter records that decide which side of a pair runs on",
	}
	cmd.AddCommand(newArbiterShowCommand())
	return cmd
}

func newArbiterShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show DIR PAIR",
		Short: "Print a pair's record in an arbiter directory (the --arbiter DIR of 'ftctl run')",
		Long: `Print a pair's arbiter record as kept in DIR (the --arbiter DIR the pair's
'ftctl run' processes share): its generation, 0 until the first claim and one
more with every claim, the owner that made the claim, and when. It only reads.`,
		Example: `  ftctl arbiter show /tmp/run/arbiter demo`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// OpenDir would create a missing directory: a typo would
			// read as a record never claimed.
			if _, err := os.Stat(args[0]); err != nil {
				return fmt.Errorf("arbiter directory: %w", err)
			}
			d, err := arbiter.OpenDir(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			rec, err := d.Read(ctx, args[1])
			if err != nil {
				return fmt.Errorf("read the record of %s in %s: %w", args[1], args[0], err)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), rec)
			return err
		},
	}
}
