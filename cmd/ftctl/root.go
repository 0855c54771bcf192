package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// exitError carries a specific exit status out of a command (for example the
// exit code of a command run inside a test host).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRootCommand() *cobra.Command {
	var verbose bool
	root := &cobra.Command{
		Use:   "ftctl",
		Short: "Run virtual machines as fault-tolerant primary/backup pairs on KVM",
		Long: `ftctl drives ftvm, which runs a VM as a primary/backup pair: the primary logs
every non-deterministic input its guest sees, the backup replays them and so
executes the same instructions, and if the primary's host dies the backup goes
live without the guest's clients noticing more than a short pause.

Typical first steps:
  ftctl image build                  build the guest kernel and initramfs (cached)
  ftctl image inspect DIR            show and verify an image directory
  ftctl testbench kvmhost run -- CMD run CMD on a KVM host that runs guest
                                     ring-0 code at speed (nested if needed)

Large downloads and builds are cached in $FTVM_CACHE (default ~/.cache/ftvm).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
		},
	}
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log debug detail to stderr")
	root.AddCommand(
		newVersionCommand(),
		newImageCommand(),
		newRunCommand(),
		newDiskCommand(),
		newNetCommand(),
		newStorageCommand(),
		newPairCommand(),
		newStartCommand(), newStatusCommand(), newFailoverCommand(), newStopCommand(), newProtectCommand(), newSnapshotCommand(),
		newArbiterCommand(),
		newTestbenchCommand(),
	)
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print ftctl's version and build information",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			version, revision, modified := "(devel)", "unknown", ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				if bi.Main.Version != "" {
					version = bi.Main.Version
				}
				for _, s := range bi.Settings {
					switch s.Key {
					case "vcs.revision":
						revision = s.Value
					case "vcs.modified":
						if s.Value == "true" {
							modified = " (modified)"
						}
					}
				}
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "ftctl %s revision %s%s\n", version, revision, modified)
			return err
		},
	}
}
