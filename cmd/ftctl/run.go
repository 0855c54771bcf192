package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images"
)

func newRunCommand() *cobra.Command {
	var (
		imageDir, kernel, initrd, cmdline, appendArgs, console string
		memory                                                 int
		stats                                                  bool
	)
	cmd := &cobra.Command{
		Use:   "run (--image DIR | --kernel FILE [--initrd FILE] [--cmdline ARGS])",
		Short: "Boot a guest in a single (unreplicated) VM with the console on this terminal",
		Long: `Boot a Linux guest in one VM. The guest's serial console is this terminal:
what it prints appears here, and lines typed here reach it. Ctrl-C stops the VM.

The VM follows ftvm's determinism contract even without a backup: no in-kernel
interrupt controller or clocks; a userspace 8259 PIC, 8254 PIT, ACPI PM timer
(the guest's clocksource), CMOS RTC and 16550 UART; interrupts injected only at
VM exits.

Exit status: 0 when the guest powers off; 2 when it resets (a reboot, or a
panic with panic=N); 3 when it halts for good instead of powering off; 1 on a VM failure (triple fault, KVM internal error), with
the vCPU registers and the last console lines; 130 after Ctrl-C.`,
		Example: `  ftctl run --image out/image
  ftctl run --image out/image --append 'ftvm.workload=sleep ftvm.seconds=5'
  ftctl run --kernel vmlinux --initrd initrd.img --cmdline 'console=ttyS0 panic=-1'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := vm.Config{MemoryMiB: memory, Kernel: kernel, Initrd: initrd, Cmdline: cmdline}
			switch {
			case imageDir != "" && kernel != "":
				return errors.New("give --image or --kernel, not both")
			case imageDir != "":
				m, err := images.Inspect(imageDir)
				if err != nil {
					return err
				}
				cfg.Kernel = filepath.Join(imageDir, m.Kernel)
				cfg.Initrd = filepath.Join(imageDir, m.Initrd)
				if cfg.Cmdline == "" {
					cfg.Cmdline = m.Cmdline
				}
			case kernel == "":
				return errors.New("nothing to boot: give --image DIR (from 'ftctl image build') or --kernel FILE")
			}
			if appendArgs != "" {
				cfg.Cmdline = strings.TrimSpace(cfg.Cmdline + " " + appendArgs)
			}
			switch console {
			case "stdio":
				cfg.Console, cfg.ConsoleInput = cmd.OutOrStdout(), os.Stdin
			case "none":
				cfg.Console = io.Discard
			default:
				f, err := os.Create(console)
				if err != nil {
					return fmt.Errorf("--console: %w", err)
				}
				defer f.Close()
				cfg.Console = f
			}
			v, err := vm.New(cfg)
			if err != nil {
				return fmt.Errorf("create VM: %w", err)
			}
			defer v.Close()
			reason, err := v.Run(cmd.Context())
			if stats {
				st := v.Stats()
				fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: %d exits %v; %d interrupts injected, %d windows, %d kicks; halted %v\n",
					st.Total(), st.ByKind(), st.Injected, st.Windows, st.Kicks, st.HaltedTime)
			}
			if err != nil {
				return err
			}
			switch reason {
			case vm.StoppedReset:
				return &exitError{code: 2, err: v.Report(errors.New("the guest reset the machine (a reboot, or a panic with panic=N)"))}
			case vm.StoppedHalted:
				return &exitError{code: 3, err: v.Report(errors.New("the guest halted the CPU with interrupts disabled instead of powering off (no ACPI power-off?)"))}
			case vm.StoppedCancelled:
				return &exitError{code: 130, err: errors.New("stopped")}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&imageDir, "image", "", "image directory from 'ftctl image build' (kernel, initrd, default command line)")
	f.StringVar(&kernel, "kernel", "", "guest kernel: vmlinux (PVH entry) or bzImage")
	f.StringVar(&initrd, "initrd", "", "initial ramdisk")
	f.StringVar(&cmdline, "cmdline", "", "kernel command line (default: the image's)")
	f.StringVar(&appendArgs, "append", "", "arguments appended to the kernel command line")
	f.StringVar(&console, "console", "stdio", "where the serial console goes: stdio, none, or a file path")
	f.IntVar(&memory, "mem", 256, "guest memory in MiB")
	f.BoolVar(&stats, "stats", false, "print exit statistics when the VM stops")
	return cmd
}
