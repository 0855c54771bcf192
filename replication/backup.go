package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
)

// BackupConfig runs a VM as the backup of a pair.
type BackupConfig struct {
	// Instance is the VM; it must describe the same machine as the
	// primary's (image, memory, command line, NIC, disks): the start
	// header is checked against it. Replay, Backup and WallTime are set
	// by the backup.
	Instance instance.Config
	// Listen is the address to accept the primary on (unix:/path or
	// host:port). Listener, if set, is used instead.
	Listen   string
	Listener *logchannel.Listener
	Log      logchannel.Config
	// StatusEvery logs a status line this often (0: never).
	StatusEvery time.Duration
	Logger      *slog.Logger
	// Listening, if set, is called with the listener's address once it
	// accepts connections.
	Listening func(addr net.Addr)
}

// BackupStatus is what a backup reports about itself.
type BackupStatus struct {
	State string
	Log   logchannel.Stats
	// LogExit is the last exit the primary's log reached so far, Exit the
	// last one the backup replayed.
	LogExit, Exit uint64
	Replayer      replay.ReplayerStats
}

func (s BackupStatus) String() string {
	return fmt.Sprintf("backup %s: at exit #%d, received %d entries %.2f Mbit/s, lag %d exits %d entries %v; digests matched %d (last at exit #%d), outputs matched %d, checkpoints loaded %d (%d pages)",
		s.State, s.Exit, s.Log.Entries, s.Log.BytesPerSec*8/1e6, s.LogExit-min(s.LogExit, s.Exit), s.Log.LagEntries, s.Log.LagTime.Round(time.Millisecond),
		s.Replayer.Digests, s.Replayer.LastDigestExit, s.Replayer.Outputs, s.Replayer.Checkpoints, s.Replayer.CheckpointPages)
}

// BackupResult is how a backup's run ended. A divergence is an error (a
// *vm.DivergenceError naming the first differing exit).
type BackupResult struct {
	Reason vm.StopReason
	Stats  vm.Stats
	Final  BackupStatus
	// PrimaryErr is why the log ended: nil for a clean close by the
	// primary, else the lost or silent peer.
	PrimaryErr error
}

// RunBackup accepts the primary, checks its start header against the
// backup's own machine, and replays the log until it ends, the guest
// stops, or the backup diverges.
func RunBackup(ctx context.Context, cfg BackupConfig) (*BackupResult, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	// Check this side's machine before anyone can connect: a missing image
	// or disk or a bad memory size is this side's mistake, said at once.
	if err := instance.Check(cfg.Instance); err != nil {
		return nil, fmt.Errorf("the backup's machine: %w", err)
	}
	if _, err := newHeader(cfg.Instance, time.Time{}); err != nil {
		return nil, fmt.Errorf("the backup's machine: %w", err)
	}
	ln := cfg.Listener
	if ln == nil {
		network, addr, err := splitAddr(cfg.Listen)
		if err != nil {
			return nil, err
		}
		if ln, err = logchannel.Listen(ctx, network, addr, cfg.Log); err != nil {
			return nil, fmt.Errorf("listen for the primary on %s: %w", cfg.Listen, err)
		}
		defer ln.Close()
	}
	if cfg.Listening != nil {
		cfg.Listening(ln.Addr())
	}
	log.Info("backup waiting for the primary", "addr", ln.Addr().String())
	recv, err := ln.Accept(ctx)
	if err != nil {
		return nil, fmt.Errorf("accept the primary: %w", err)
	}
	defer recv.Close()

	_, first, err := recv.Next(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the primary's start header: %w", err)
	}
	hdr, err := decodeHeader(first)
	if err != nil {
		return nil, err
	}
	own, err := newHeader(cfg.Instance, hdr.WallTime)
	if err != nil {
		return nil, err
	}
	if d := hdr.mismatch(own); d != "" {
		return nil, fmt.Errorf("the primary runs another machine: %s", d)
	}
	recv.ReportReplayed(1)

	var lastSeq uint64
	var primaryErr error
	rep := replay.NewStreamReplayer(func() ([]byte, error) {
		if lastSeq > 0 {
			recv.ReportReplayed(lastSeq) // everything before this batch is decoded
		}
		seq, entry, err := recv.Next(ctx)
		if err != nil {
			if !errors.Is(err, logchannel.ErrPeerClosed) {
				primaryErr = err
			}
			return nil, io.EOF // the log ends here either way
		}
		lastSeq = seq
		return entry, nil
	})
	icfg := cfg.Instance
	icfg.Replay, icfg.Record, icfg.Backup, icfg.WallTime = rep, nil, true, hdr.WallTime
	inst, err := instance.New(ctx, icfg)
	if err != nil {
		return nil, err
	}
	defer inst.Close()

	var statusMu sync.Mutex
	state := "replaying"
	status := func() BackupStatus {
		statusMu.Lock()
		defer statusMu.Unlock()
		le, e := rep.Progress()
		return BackupStatus{State: state, Log: recv.Stats(), LogExit: le, Exit: e, Replayer: rep.Stats()}
	}
	stopStatus := make(chan struct{})
	var wg sync.WaitGroup
	if cfg.StatusEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(cfg.StatusEvery)
			defer t.Stop()
			for {
				select {
				case <-stopStatus:
					return
				case <-t.C:
					log.Info(status().String())
				}
			}
		}()
	}
	reason, runErr := inst.Run(ctx)
	close(stopStatus)
	wg.Wait()
	res := &BackupResult{Reason: reason, Stats: inst.VM.Stats(), PrimaryErr: primaryErr}
	res.Final = status()
	res.Final.State = "stopped: " + reason.String()
	res.Final.Replayer = rep.Stats()
	if runErr != nil {
		res.Final.State = "stopped: " + runErr.Error()
		var de *vm.DivergenceError
		if errors.As(runErr, &de) {
			runErr = fmt.Errorf("%w\nthe last log entries the backup replayed:\n  %s", runErr, strings.Join(rep.Recent(), "\n  "))
		}
		return res, runErr
	}
	return res, nil
}
