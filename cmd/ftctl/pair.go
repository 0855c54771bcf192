package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/failover/control"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/snapshot"
	"github.com/ftvm/ftvm/storage/arbiter"
)

// pairSide is what either side of a pair opens from its flags: the log
// channel's configuration, the arbiter (nil without one) and the pair's
// name, and the control socket.
type pairSide struct {
	log   logchannel.Config
	arb   arbiter.Arbiter
	pair  string
	ctl   *controlSocket
	close func()
}

func openSide(cmd *cobra.Command, role logchannel.Role, flag, addr string, silence time.Duration, name string) (pairSide, error) {
	lcfg, err := logChannelConfig(cmd, role, flag, addr, silence)
	if err != nil {
		return pairSide{}, err
	}
	arb, pair, closeArb, err := arbiterFromFlags(cmd)
	if err != nil {
		return pairSide{}, err
	}
	ctl, err := serveControl(cmd, name)
	if err != nil {
		closeArb()
		return pairSide{}, err
	}
	return pairSide{log: lcfg, arb: arb, pair: pair, ctl: ctl, close: func() { ctl.Close(); closeArb() }}, nil
}

// runPrimary runs the VM as the primary of a pair (ftctl run --role primary).
func runPrimary(cmd *cobra.Command, cfg instance.Config, peer string, every, silence, maxLag time.Duration, stats, consoleLive, again bool) error {
	ctx := cmd.Context()
	side, err := openSide(cmd, logchannel.RoleSender, "--peer", peer, silence, "primary")
	if err != nil {
		return err
	}
	defer side.close()
	lcfg, arb, pair, ctl := side.log, side.arb, side.pair, side.ctl
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
	restore, _ := cmd.Flags().GetString("restore")
	p, err := replication.NewPrimary(ctx, replication.PrimaryConfig{
		Instance: cfg, Restore: restore, Peer: peer, Log: lcfg,
		StatusEvery: every, Logger: log, ConsoleLive: consoleLive,
		Arbiter: arb, Pair: pair, MaxLag: maxLag, ProtectAgain: again,
	})
	if err != nil {
		return err
	}
	defer p.Close()
	ctl.Set(control.FromPrimary(p.Status))
	ctl.SetSnapshotter(func(ctx context.Context, file string) (string, error) {
		return snapshotRunning(ctx, file, func(w io.Writer) (snapshot.Sum, error) { return p.Snapshot(ctx, w) })
	})
	if consoleLive {
		fmt.Fprintln(cmd.ErrOrStderr(), "ftctl: --console-live: console output is shown as printed, not held until the backup has the log")
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: primary connected to the backup at %s; replicating\n", peer)
	// SIGUSR2: a planned switchover (ftctl failover --planned sends it).
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	go func() {
		if _, ok := <-usr2; ok {
			fmt.Fprintln(cmd.ErrOrStderr(), "ftctl: SIGUSR2: handing the guest over to the backup (planned switchover)")
			p.Handover()
		}
	}()
	res, err := p.Run(ctx)
	if res != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: %v\n", res.Final)
		if stats {
			fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: %d exits (%d synchronous), %d kicks\n", res.Stats.Total(), res.Stats.SyncExits, res.Stats.Kicks)
		}
	}
	var lost *replication.LostArbitrationError
	if errors.As(err, &lost) {
		return &exitError{code: 7, err: err}
	}
	if err != nil {
		return err
	}
	if res.HandedOver {
		fmt.Fprintln(cmd.ErrOrStderr(), "ftctl: handed over: the backup has the whole log and goes live")
		return nil
	}
	return stopError(res.Reason, p.VM())
}

// runBackup runs the VM as the backup of a pair (ftctl run --role backup).
func runBackup(cmd *cobra.Command, cfg instance.Config, listen string, every, silence time.Duration, protectTo string, resync bool) error {
	ctx := cmd.Context()
	cfg.ConsoleInput = nil // the primary's console input arrives in the log
	side, err := openSide(cmd, logchannel.RoleReceiver, "--listen", listen, silence, "backup")
	if err != nil {
		return err
	}
	defer side.close()
	lcfg, arb, pair, ctl := side.log, side.arb, side.pair, side.ctl
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
	restore, _ := cmd.Flags().GetString("restore")
	var pcfg logchannel.Config
	if protectTo != "" {
		if arb == nil {
			return errors.New("--protect-to needs --arbiter and --pair: a backup goes live (and so protects again) only with them")
		}
		if pcfg, err = logChannelConfig(cmd, logchannel.RoleSender, "--protect-to", protectTo, silence); err != nil {
			return err
		}
	}
	// Once live: 'ftctl protect' may protect the guest again by hand, and
	// --protect-to does it at once.
	live := func(protect replication.ProtectFunc) {
		ctl.SetProtector(func(ctx context.Context, addr string) (string, error) {
			lcfg, err := logChannelConfig(cmd, logchannel.RoleSender, "--backup", addr, silence)
			if err != nil {
				return "", err
			}
			res, err := protect(ctx, replication.PrimaryConfig{Peer: addr, Log: lcfg, ProtectAgain: true}, protectOptions(cmd))
			if err != nil {
				return "", err
			}
			return res.String(), nil
		})
		if protectTo != "" {
			go protectAgain(ctx, cmd, protect, protectTo, pcfg)
		}
	}
	res, err := replication.RunBackup(ctx, replication.BackupConfig{
		Live: live, Resync: resync,
		Instance: cfg, Restore: restore, Listen: listen, Log: lcfg,
		StatusEvery: every, Logger: log, Arbiter: arb, Pair: pair,
		Running: func(status func() replication.BackupStatus) { ctl.Set(control.FromBackup(status)) },
		Listening: func(addr net.Addr) {
			fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: backup listening on %s; start the primary with --role primary --peer %s\n", addr, listen)
		},
	})
	if res != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: %v\n", res.Final)
		if res.WentLive {
			fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: went live at exit #%d: %v\n", res.Stats.WentLiveAt, res.Failover)
		}
	}
	var de *vm.DivergenceError
	var lost *replication.LostArbitrationError
	switch {
	case errors.As(err, &de):
		return &exitError{code: 4, err: err}
	case errors.As(err, &lost):
		return &exitError{code: 7, err: err}
	case err != nil:
		return err
	case res.WentLive:
		return stopError(res.Reason, nil)
	case res.PrimaryErr != nil:
		hint := "give both sides --arbiter and --pair to let the backup go live"
		return &exitError{code: 5, err: fmt.Errorf("the primary was lost (%w); the backup replayed everything it logged up to exit #%d and stops: %s", res.PrimaryErr, res.Stats.SyncExits, hint)}
	case res.Reason == vm.StoppedCancelled:
		return &exitError{code: 130, err: errors.New("stopped")}
	}
	return nil
}

// protectAgain makes the live survivor the primary of a new pair with the
// backup at addr, asking every second until one answers there.
func protectAgain(ctx context.Context, cmd *cobra.Command, protect replication.ProtectFunc, addr string, lcfg logchannel.Config) {
	out := cmd.ErrOrStderr()
	fmt.Fprintf(out, "ftctl: live; protecting the guest again: copying it to the new backup at %s while it runs\n", addr)
	for ctx.Err() == nil {
		// No StatusEvery: the backup's status lines show the new pair's
		// primary from now on.
		res, err := protect(ctx, replication.PrimaryConfig{Peer: addr, Log: lcfg, ProtectAgain: true}, protectOptions(cmd))
		if err == nil {
			fmt.Fprintf(out, "ftctl: protected again: %v\n", res)
			return
		}
		fmt.Fprintf(out, "ftctl: protect: %v; asking again in 1s\n", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
