package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/testbench/kvmhost"
)

func newTestbenchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "testbench",
		Short: "Test harnesses: a KVM host for guest code, a kv workload client, fault injection, benchmarks",
	}
	cmd.AddCommand(newKVMHostCommand(), newKVClientCommand())
	return cmd
}

func newKVMHostCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kvmhost",
		Short: "Run commands on a KVM host that executes guest ring-0 code at speed",
		Long: `A KVM host that runs guest ring-0 code at speed is this machine when its
/dev/kvm is hardware-backed. Otherwise (no /dev/kvm, or a KVM that emulates
ring 0 about 1000x slower) it is a nested host: QEMU's software CPU with
nested SVM, booting Debian's prebuilt cloud kernel with kvm and kvm-amd
loaded. The first use downloads that kernel package (about 26 MB) and
installs qemu-system-x86 and busybox-static if missing; both are cached.

Set FTVM_KVMHOST=nested or FTVM_KVMHOST=direct to force the choice.`,
	}
	cmd.AddCommand(newKVMHostRunCommand(), newKVMHostWhereCommand())
	return cmd
}

func newKVMHostWhereCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "where",
		Short: "Say whether KVM work runs directly here or in a nested host, and why",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			direct, why := kvmhost.DirectKVM()
			where := "nested host"
			if direct {
				where = "directly on this machine"
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", where, why)
			return err
		},
	}
}

func newKVMHostRunCommand() *cobra.Command {
	var (
		files   []string
		memory  int
		cpus    int
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARG...]",
		Short: "Run COMMAND on a KVM host and exit with its status",
		Long: `Run COMMAND on a KVM host (see 'ftctl testbench kvmhost --help') with its
output on this terminal, and exit with its exit status.

In a nested host, COMMAND and every --file are copied in at the same absolute
paths (with the shared libraries they need), so paths work unchanged. The
host has busybox for everything else. Inside, FTVM_KVMHOST_ROLE=inside is set.`,
		Example: `  ftctl testbench kvmhost run -- sh -c 'ls -l /dev/kvm; cat /proc/modules'
  go test -c -o /tmp/kvm.test ./hypervisor/kvm && ftctl testbench kvmhost run -- /tmp/kvm.test -test.v`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if direct, _ := kvmhost.DirectKVM(); direct {
				c := exec.CommandContext(cmd.Context(), args[0], args[1:]...)
				c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
				if err := c.Run(); err != nil {
					var ee *exec.ExitError
					if errors.As(err, &ee) {
						return &exitError{code: ee.ExitCode(), err: fmt.Errorf("%s exited with status %d", args[0], ee.ExitCode())}
					}
					return fmt.Errorf("run %s: %w", args[0], err)
				}
				return nil
			}
			argv := append([]string(nil), args...)
			if strings.Contains(argv[0], "/") {
				abs, err := filepath.Abs(argv[0])
				if err != nil {
					return err
				}
				argv[0] = abs
			} else if p, err := exec.LookPath(argv[0]); err == nil {
				if abs, err := filepath.Abs(p); err == nil {
					argv[0] = abs
				}
			}
			if _, err := os.Stat(argv[0]); err == nil {
				files = append(files, argv[0])
			}
			for _, f := range files {
				if _, err := os.Stat(f); err != nil {
					return fmt.Errorf("--file %s: %w", f, err)
				}
			}
			host, err := kvmhost.Start(cmd.Context(), kvmhost.Config{Files: files, MemoryMiB: memory, CPUs: cpus, Progress: cmd.ErrOrStderr()})
			if err != nil {
				return err
			}
			defer host.Close()
			res, err := host.Run(cmd.Context(), kvmhost.Command{Argv: argv, Timeout: timeout, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()})
			if err != nil {
				return err
			}
			if cerr := host.Close(); cerr != nil {
				return cerr
			}
			switch {
			case res.TimedOut:
				return &exitError{code: 124, err: fmt.Errorf("%s timed out after %v in the nested host", args[0], timeout)}
			case res.ExitCode != 0:
				return &exitError{code: res.ExitCode, err: fmt.Errorf("%s exited with status %d in the nested host", args[0], res.ExitCode)}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&files, "file", nil, "host file or directory to copy into the nested host at the same path (repeatable)")
	cmd.Flags().IntVar(&memory, "mem", 2048, "nested host memory in MiB (files copied in use it too)")
	cmd.Flags().IntVar(&cpus, "cpus", 1, "nested host CPUs")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "kill COMMAND after this long")
	return cmd
}
