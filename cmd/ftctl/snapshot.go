package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/snapshot"
)

// readyLine is what the image's /init prints once the guest is up (before
// its workload starts): the point --snapshot-at-ready snapshots.
const readyLine = "ftvm-guest ready"

// snapshotFlags are ftctl run's --restore and --snapshot-at-ready.
type snapshotFlags struct {
	restore, atReady string
}

// check refuses what cannot work before anything is opened: a snapshot to
// restore that is not a snapshot of this machine (naming the difference),
// or one to write over an existing file.
func (s snapshotFlags) check(cfg instance.Config, role string) error {
	if s.restore == "" && s.atReady == "" {
		return nil
	}
	if s.atReady != "" && role != "" && role != "none" {
		return errors.New("--snapshot-at-ready is for a VM alone (--role none): take the snapshot first, then start both sides of the pair with --restore")
	}
	if s.restore != "" && s.atReady != "" {
		return errors.New("give --restore or --snapshot-at-ready, not both (a restored guest does not print its ready line again)")
	}
	if s.atReady != "" {
		if _, err := os.Stat(s.atReady); err == nil {
			return fmt.Errorf("--snapshot-at-ready %s: the file exists; remove it or name another", s.atReady)
		}
		if fi, err := os.Stat(filepath.Dir(s.atReady)); err != nil || !fi.IsDir() {
			return fmt.Errorf("--snapshot-at-ready %s: no directory %s to write it in", s.atReady, filepath.Dir(s.atReady))
		}
		return nil
	}
	f, err := os.Open(s.restore)
	if err != nil {
		return fmt.Errorf("--restore: %w", err)
	}
	defer f.Close()
	r, err := snapshot.NewReader(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("--restore %s: %w", s.restore, err)
	}
	if r.Meta().Kind != snapshot.Full {
		return fmt.Errorf("--restore %s: a %v snapshot; restore takes a full one", s.restore, r.Meta().Kind)
	}
	own, err := instance.Identity(cfg)
	if err != nil {
		return err
	}
	if err := r.Meta().Identity.Check(&own); err != nil {
		return fmt.Errorf("--restore %s: %w; give ftctl run the machine options the snapshot was taken with", s.restore, err)
	}
	return nil
}

// runPlain runs a VM alone: booted, or restored from a snapshot, and
// optionally snapshotted (and stopped) at its ready line.
func runPlain(cmd *cobra.Command, cfg instance.Config, snap snapshotFlags, stats bool) error {
	ctx := cmd.Context()
	if ctl, _ := cmd.Flags().GetString("control"); ctl != "" {
		cfg.Replicable = true // ftctl protect may make it a primary while it runs
	}
	var ready *lineWatch
	if snap.atReady != "" {
		ready = newLineWatch(cfg.Console, readyLine)
		cfg.Console = ready
	}
	inst, err := instance.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer inst.Close()
	if snap.restore != "" {
		if err := restoreFrom(inst, snap.restore); err != nil {
			return err
		}
	}
	if snap.atReady != "" {
		if _, err := inst.Identity(); err != nil {
			return err
		}
	}
	runCtx, stopCause := context.WithCancelCause(ctx)
	stop := func() { stopCause(nil) }
	defer stop()
	// With --control the VM can be protected while it runs (ftctl
	// protect); the new pair's primary then ends with the run.
	finishPrimary, closeCtl, err := servePlainControl(cmd, inst, runCtx, stopCause)
	if err != nil {
		return err
	}
	defer closeCtl()
	type result struct {
		reason vm.StopReason
		err    error
	}
	done := make(chan result, 1)
	go func() {
		reason, err := inst.Run(runCtx)
		done <- result{reason, err}
	}()
	var res result
	var taken *snapshot.Sum
	if ready != nil {
		select {
		case res = <-done:
		case <-ready.seen:
			sum, err := writeSnapshot(ctx, inst, snap.atReady, stop)
			res = <-done
			if err != nil {
				return err
			}
			taken = &sum
		}
	} else {
		res = <-done
	}
	if stats {
		printStats(cmd, inst)
	}
	if fin := finishPrimary(); fin != nil {
		pres, err := fin(res.reason, res.err)
		if pres != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: %v\n", pres.Final)
		}
		var lost *replication.LostArbitrationError
		if errors.As(err, &lost) {
			return &exitError{code: 7, err: err}
		}
		if err != nil {
			return err
		}
		return stopError(res.reason, inst.VM)
	}
	if res.err != nil {
		return res.err
	}
	if taken != nil {
		fi, _ := os.Stat(snap.atReady)
		fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: snapshot %s at the guest's ready line (exit %d): sha256 %v, %d MiB\n",
			snap.atReady, inst.VM.ExitNumber(), taken, fi.Size()>>20)
		return nil
	}
	return stopError(res.reason, inst.VM)
}

// restoreFrom loads the snapshot in file into inst.
func restoreFrom(inst *instance.Instance, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("--restore: %w", err)
	}
	defer f.Close()
	if _, err := inst.Restore(bufio.NewReaderSize(f, 1<<20)); err != nil {
		return fmt.Errorf("--restore %s: %w", file, err)
	}
	return nil
}

// writeSnapshot snapshots inst into file at its next exit and stops it
// there. The snapshot is written beside file and renamed into place once
// synced, so file is whole or absent.
func writeSnapshot(ctx context.Context, inst *instance.Instance, file string, stop context.CancelFunc) (snapshot.Sum, error) {
	sum, err := writeSnapshotFile(file, func(w io.Writer) (snapshot.Sum, error) { return inst.Snapshot(ctx, w, stop) })
	if err != nil {
		stop()
	}
	return sum, err
}

// writeSnapshotFile writes what take writes to file through a temporary
// file in the same directory, synced and renamed once complete, so a crash
// leaves no half snapshot under the name.
func writeSnapshotFile(file string, take func(io.Writer) (snapshot.Sum, error)) (snapshot.Sum, error) {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return snapshot.Sum{}, fmt.Errorf("write snapshot: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing there
	defer tmp.Close()
	w := bufio.NewWriterSize(tmp, 1<<20)
	sum, err := take(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		return snapshot.Sum{}, fmt.Errorf("write snapshot %s: %w", file, err)
	}
	return sum, nil
}

// lineWatch passes console output on to w and closes seen once it has
// shown what, which may be split across writes. It matches byte by byte
// without buffering (console writes are on the vCPU goroutine): after a
// mismatch it starts again from the mismatching byte, which is exact for
// a what whose first byte does not recur in it, as readyLine's 'f'.
type lineWatch struct {
	w       io.Writer
	what    []byte
	matched int
	seen    chan struct{}
}

func newLineWatch(w io.Writer, what string) *lineWatch {
	return &lineWatch{w: w, what: []byte(what), seen: make(chan struct{})}
}

func (l *lineWatch) Write(p []byte) (int, error) {
	for _, b := range p {
		if l.matched == len(l.what) {
			break
		}
		switch {
		case b == l.what[l.matched]:
			l.matched++
		case b == l.what[0]:
			l.matched = 1
		default:
			l.matched = 0
		}
		if l.matched == len(l.what) {
			close(l.seen)
		}
	}
	return l.w.Write(p)
}
