package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/ftvm/ftvm/images"
	"github.com/spf13/cobra"
)

func newImageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and inspect guest images (kernel, initramfs, manifest)",
		Long: `A guest image is a directory holding everything needed to boot an ftvm guest:

  vmlinux        the guest kernel as ELF, booted through its PVH entry point
  bzImage        the same kernel for the Linux boot protocol (QEMU -kernel)
  initrd.img     gzip'd newc cpio with the guest /init (images/guestinit)
  manifest.json  file names, sha256 of each, default kernel command line,
                 kernel config hash, linux-source version, ftvm version

The kernel is Debian's linux-source-6.1 built with the committed config
fragment images/kernel/ftvm.config on top of tinyconfig. The guest /init
prints "ftvm-guest ready clocksource=... kernel=..." on the console, runs
the workload named by ftvm.workload= on the kernel command line, prints
"ftvm-guest exit status=N" and powers off.`,
	}
	cmd.AddCommand(newImageBuildCommand(), newImageInspectCommand())
	return cmd
}

func newImageBuildCommand() *cobra.Command {
	var out string
	var jobs int
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the guest kernel (cached) and initramfs into an image directory",
		Long: `Build writes a guest image directory (default out/image).

The kernel build installs what it needs with apt-get when missing
(linux-source-6.1 build-essential bc flex bison libelf-dev cpio xz-utils),
unpacks the source, configures tinyconfig plus images/kernel/ftvm.config,
checks that every option of the fragment made it into the final .config,
and compiles vmlinux and bzImage. The first build takes about 8 minutes on
2 cores; the result is cached in $FTVM_CACHE/kernel/<hash> (default
~/.cache/ftvm), keyed by the sha256 of the fragment and the linux-source
version, so later builds take seconds. The full make log is kept there too.

The guest /init is compiled from this source tree with the go tool
(CGO_ENABLED=0), so run ftctl from inside a checkout or set FTVM_SOURCE to
one.`,
		Example: `  ftctl image build
  ftctl image build --out /tmp/img --jobs 4
  ftctl image inspect out/image`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			m, err := images.Build(cmd.Context(), images.Options{
				OutDir: out, Jobs: jobs, Progress: cmd.ErrOrStderr(), Logger: slog.Default(),
			})
			if err != nil {
				return err
			}
			abs, err := filepath.Abs(out)
			if err != nil {
				abs = out
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "image built in %s: %s\n%s",
				time.Since(start).Round(time.Millisecond), abs, m.Summary())
			return err
		},
	}
	cmd.Flags().StringVar(&out, "out", filepath.Join("out", "image"), "image directory to write (created if missing)")
	cmd.Flags().IntVar(&jobs, "jobs", 0, "parallel make jobs for the kernel build (default: number of CPUs)")
	return cmd
}

func newImageInspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect DIR",
		Short: "Show an image directory's manifest and verify its files",
		Long: `Inspect prints the manifest of an image directory and verifies every file it
names: present, with the recorded sha256, and of the right kind (vmlinux a
complete x86-64 ELF, bzImage with the boot protocol header, initrd gzip).
It exits non-zero naming each problem; the cure is usually to rebuild with
"ftctl image build --out DIR".`,
		Example: "  ftctl image inspect out/image",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := images.Inspect(args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%sverified: all files present with matching sha256\n", m.Summary())
			return err
		},
	}
}
