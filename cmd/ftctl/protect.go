package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/failover/control"
	"github.com/ftvm/ftvm/failover/supervisor"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/snapshot"
)

// protectOptions is how 'ftctl protect' copies a running guest: the
// progress of each round on the VMM's stderr.
func protectOptions(cmd *cobra.Command) replication.TransferOptions {
	out := cmd.ErrOrStderr()
	return replication.TransferOptions{Progress: func(p replication.TransferProgress) { fmt.Fprintf(out, "ftctl: protect: %v\n", p) }}
}

// servePlainControl serves --control for a VM running alone: its status,
// and a protector that makes it the primary of a new pair while it runs.
// finish returns the new pair's primary's end (nil while unprotected).
func servePlainControl(cmd *cobra.Command, inst *instance.Instance, runCtx context.Context, stopVM context.CancelCauseFunc) (finish func() func(vm.StopReason, error) (*replication.PrimaryResult, error), closeCtl func(), err error) {
	var mu sync.Mutex
	var fin func(vm.StopReason, error) (*replication.PrimaryResult, error)
	finish = func() func(vm.StopReason, error) (*replication.PrimaryResult, error) {
		mu.Lock()
		defer mu.Unlock()
		return fin
	}
	path, _ := cmd.Flags().GetString("control")
	if path == "" {
		return finish, func() {}, nil
	}
	ctl, err := serveControl(cmd, "alone")
	if err != nil {
		return nil, nil, err
	}
	pid := os.Getpid()
	ctl.Set(control.SourceFunc(func() control.Status {
		return control.Status{Role: "alone", PID: pid, Phase: "unprotected", State: "running alone: 'ftctl protect --control " + path + " --backup ADDR' makes it a pair", Exit: inst.VM.Exits()}
	}))
	silence, _ := cmd.Flags().GetDuration("peer-timeout")
	ctl.SetProtector(func(ctx context.Context, addr string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if fin != nil {
			return "", errors.New("the VM is protected already")
		}
		lcfg, err := logChannelConfig(cmd, logchannel.RoleSender, "--backup", addr, silence)
		if err != nil {
			return "", err
		}
		arb, pair, _, err := arbiterFromFlags(cmd)
		if err != nil {
			return "", err
		}
		every, _ := cmd.Flags().GetDuration("status-every")
		fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: protecting the running guest: copying it to the backup at %s\n", addr)
		p, res, err := replication.Protect(ctx, inst, runCtx, stopVM, replication.PrimaryConfig{
			Peer: addr, Log: lcfg, Arbiter: arb, Pair: pair, StatusEvery: every,
			Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)),
		}, protectOptions(cmd))
		if err != nil {
			return "", err
		}
		// The pair outlives the request that made it.
		fin = p.Start(context.WithoutCancel(ctx))
		ctl.Set(control.FromPrimary(p.Status))
		fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: protected: %v\n", res)
		return res.String(), nil
	})
	ctl.SetSnapshotter(func(ctx context.Context, file string) (string, error) {
		return snapshotRunning(ctx, file, func(w io.Writer) (snapshot.Sum, error) { return inst.Snapshot(ctx, w, nil) })
	})
	return finish, ctl.Close, nil
}

// snapshotRunning writes a snapshot of a running VM (take, at its next
// exit) to file, which must not exist yet: through a temporary file
// renamed once complete and synced, so a crash leaves no half snapshot.
func snapshotRunning(ctx context.Context, file string, take func(io.Writer) (snapshot.Sum, error)) (string, error) {
	if !filepath.IsAbs(file) {
		return "", fmt.Errorf("snapshot file %q: give an absolute path (it is written by the VMM, whose working directory may differ)", file)
	}
	if _, err := os.Stat(file); err == nil {
		return "", fmt.Errorf("snapshot file %s exists: not overwriting it", file)
	}
	start := time.Now()
	sum, err := writeSnapshotFile(file, take)
	if err != nil {
		return "", err
	}
	fi, _ := os.Stat(file)
	return fmt.Sprintf("%s: sha256 %v, %.1f MiB, written in %v (the guest paused for it)", file, sum, float64(fi.Size())/(1<<20), time.Since(start).Round(time.Millisecond)), nil
}

func newSnapshotCommand() *cobra.Command {
	var ctlPath string
	cmd := &cobra.Command{
		Use:   "snapshot (NAME | --control SOCK) FILE",
		Short: "Write a snapshot of a running VM to FILE (ftctl run --restore starts from it)",
		Long: `Write a snapshot of a running VM: the VMM stops the guest at its next exit,
writes the whole machine (vCPU, devices, memory without its zero pages) to
FILE, and lets it run on. The disks are not in it: restore on the disks as
they will be then. FILE is an absolute path on the VMM's host and must not
exist. The VM is a pair's primary (give the pair's NAME) or one started
with 'ftctl run --control SOCK' (give --control); a backup cannot be
snapshotted (it replays the primary's log).

'ftctl run --restore FILE' with the same machine options starts a VM from
it; both sides of a pair given the same --restore start the pair from it.`,
		Example: `  ftctl snapshot kv /var/lib/ftvm/kv.snap
  ftctl snapshot --control /tmp/vm.sock /tmp/vm.snap`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[len(args)-1]
			switch {
			case len(args) == 2 && ctlPath != "":
				return errors.New("give a pair's NAME or --control SOCK, not both")
			case len(args) == 2:
				dir, err := pairRunDir(cmd, args[0])
				if err != nil {
					return err
				}
				ctlPath = dir.Control(supervisor.Primary)
			case ctlPath == "":
				return errors.New("which VM? give a pair's NAME or --control SOCK, then the FILE")
			}
			abs, err := filepath.Abs(file)
			if err != nil {
				return err
			}
			report, err := control.Snapshot(cmd.Context(), ctlPath, abs)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "snapshot %s\n", report)
			return nil
		},
	}
	cmd.Flags().StringVar(&ctlPath, "control", "", "the VM's control socket ('ftctl run --control')")
	addRunDirFlag(cmd.Flags())
	return cmd
}

func newProtectCommand() *cobra.Command {
	var ctlPath, backup string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "protect [NAME] (--control SOCK | NAME) --backup ADDR",
		Short: "Make a running VM the primary of a new pair without stopping its guest",
		Long: `Protect a VM while it runs: the VMM behind the control socket copies its
running guest to the backup listening at --backup (start one first with
'ftctl run --role backup --listen ADDR' and the same machine options), in
rounds while the guest runs (a full copy, then the pages written meanwhile;
a guest that writes memory faster than the channel sends it is throttled),
then stops it at one exit for the last pages and the machine state and
from there records for the backup as a primary does. The guest's pause is
that last round. It prints the transfer: rounds, pages, time, pause.

The VM is either one running alone that was started with --control (which
turns on the dirty-page logging this needs), or the backup of a pair that
went live after its primary died (give the pair's NAME: its backup's
control socket in the run directory, or --control). 'ftctl start' does
this by itself after every failover.

Exit status: 0 once protected; 1 when the VM cannot be protected now or the
copy failed (the guest runs on unprotected).`,
		Example: `  ftctl run --image out/image --append ftvm.workload=kv --control /tmp/vm.sock &
  ftctl run --image out/image --append ftvm.workload=kv --role backup --listen unix:/tmp/b.sock &
  ftctl protect --control /tmp/vm.sock --backup unix:/tmp/b.sock`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if backup == "" {
				return errors.New("--backup ADDR is required: the --listen address of the backup to copy the guest to")
			}
			switch {
			case len(args) == 1 && ctlPath != "":
				return errors.New("give a pair's NAME or --control SOCK, not both")
			case len(args) == 1:
				dir, err := pairRunDir(cmd, args[0])
				if err != nil {
					return err
				}
				ctlPath = dir.Control(supervisor.Backup)
			case ctlPath == "":
				return errors.New("which VM? give a pair's NAME or --control SOCK (the VM's 'ftctl run --control')")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			report, err := control.Protect(ctx, ctlPath, backup)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "protected: %s\n", report)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ctlPath, "control", "", "the VM's control socket ('ftctl run --control')")
	f.StringVar(&backup, "backup", "", "the new backup's --listen address, unix:/path or host:port")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up waiting for the copy after this long")
	addRunDirFlag(f)
	return cmd
}
