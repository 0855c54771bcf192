package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/hypervisor/virtio"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/storage/arbiter"
)

// BackupConfig runs a VM as the backup of a pair.
type BackupConfig struct {
	// Instance is the VM; it must describe the same machine as the
	// primary's (image, memory, command line, NIC, disks): the start
	// header is checked against it. Replay, Backup and WallTime are set
	// by the backup.
	Instance instance.Config
	// Restore, if set, is the full snapshot file the pair starts from
	// (fast start); the primary's start header must name the same one.
	Restore string
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
	// Arbiter, if set, lets the backup go live when its primary is lost
	// (not when the primary closes the log cleanly): it replays every
	// entry it received, claims Pair's record from the generation it read
	// at start, and if it wins goes live where the log ends (disks opened,
	// the writes the primary may not have released re-issued, NIC attached
	// and announced). If the primary won, the backup stops with a
	// *LostArbitrationError. Without an Arbiter a lost primary ends the
	// backup's run (PrimaryErr says why).
	Arbiter arbiter.Arbiter
	// Pair names the record; Owner this side (default "backup on HOST pid N").
	Pair, Owner string
	// Running, if set, is called once the backup's VM exists, with a
	// function that reports its status from any goroutine (a control
	// socket, metrics).
	Running func(status func() BackupStatus)
	// Live, if set, is called once the backup went live, with the function
	// that makes the survivor the primary of a new pair while it runs
	// (re-protection; see Protect). It is called on the VM's goroutine and
	// must return at once: protect from another goroutine. The survivor is
	// protected at most once; the new pair's primary ends with this run.
	Live func(protect ProtectFunc)
	// Resync: a backup that diverges from its primary (a digest, an
	// output or an exit differs) does not stop: it logs the first
	// differing exit, throws its VM away and waits on the same listener
	// for a fresh copy of the primary's running state, which a primary
	// with PrimaryConfig.Reprotect sends once it finds its backup lost.
	Resync bool
	// WrapReplayer, if set, wraps the replayer the VM reads the log
	// through (tests: alter one replayed value to inject a divergence).
	WrapReplayer func(vm.Replayer) vm.Replayer
}

// ProtectFunc makes a running VM the primary of a new pair (see Protect);
// cfg's Arbiter, Pair and Logger default to the backup's.
type ProtectFunc func(ctx context.Context, cfg PrimaryConfig, opts TransferOptions) (TransferResult, error)

// BackupStatus is what a backup reports about itself.
type BackupStatus struct {
	State string
	// Generation is the arbiter record's generation this side read at
	// start, or won going live (0 without an arbiter).
	Generation uint64
	// KeptWrites are the replayed disk writes the primary may not have
	// released yet (re-issued on going live).
	KeptWrites, KeptBytes int
	Log                   logchannel.Stats
	// LogExit is the last exit the primary's log reached so far, Exit the
	// last one the backup replayed.
	LogExit, Exit uint64
	Replayer      replay.ReplayerStats
	// Failover is how going live went, once the backup is live (nil
	// before).
	Failover *FailoverTimeline
	// Primary is the survivor's status as the primary of a new pair, once
	// it was protected again (nil before).
	Primary *PrimaryStatus
	// Transfer is how that protection's state transfer went.
	Transfer *TransferResult
	// Resyncs counts the divergences this backup recovered from with a
	// fresh copy of the primary's state (BackupConfig.Resync).
	Resyncs int
}

func (s BackupStatus) String() string {
	if s.Primary != nil {
		return fmt.Sprintf("survivor protected again (%v): %v", s.Transfer, s.Primary)
	}
	resync := ""
	if s.Resyncs > 0 {
		resync = fmt.Sprintf(", %d resyncs", s.Resyncs)
	}
	return fmt.Sprintf("backup %s (generation %d%s, %d replayed writes kept): at exit #%d, received %d entries %.2f Mbit/s, lag %d exits %d entries %v (minute p50 %v p99 %v); digests matched %d (last at exit #%d), outputs matched %d, checkpoints loaded %d (%d pages, %d more verified by hash)",
		s.State, s.Generation, resync, s.KeptWrites, s.Exit, s.Log.Entries, s.Log.BytesPerSec*8/1e6, s.LogExit-min(s.LogExit, s.Exit), s.Log.LagEntries, s.Log.LagTime.Round(time.Millisecond),
		s.Log.LagP50.Round(time.Millisecond), s.Log.LagP99.Round(time.Millisecond),
		s.Replayer.Digests, s.Replayer.LastDigestExit, s.Replayer.Outputs, s.Replayer.Checkpoints, s.Replayer.CheckpointPages, s.Replayer.CheckpointPagesVerified)
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
	// WentLive: the primary was lost, this backup won the arbiter and ran
	// the guest on from exit Stats.WentLiveAt; Failover says how it went.
	WentLive bool
	Failover FailoverTimeline
	// Protected is how the survivor's run as the primary of a new pair
	// ended, if it was protected again after going live.
	Protected *PrimaryResult
	// Resyncs counts the divergences recovered from (BackupConfig.Resync).
	Resyncs int
}

// FailoverTimeline is how a backup's go-live went, each step as the time
// since the log channel's failure detector found the primary lost (a reset
// connection at once, silence after the peer timeout).
type FailoverTimeline struct {
	PrimaryLost time.Time
	Why         error
	// Drained: the backup had replayed every entry it received (its lag);
	// Claimed: the arbiter answered; Live: disks open, writes re-issued,
	// NIC attached.
	Drained, Claimed, Live time.Duration
	Generation             uint64
	RewrittenWrites        int
	ResentFrames           int
}

func (f FailoverTimeline) String() string {
	return fmt.Sprintf("primary lost (%v); log drained +%v, record claimed (generation %d) +%v, live +%v; %d disk writes re-issued, %d frames sent again",
		f.Why, f.Drained.Round(time.Millisecond), f.Generation, f.Claimed.Round(time.Millisecond), f.Live.Round(time.Millisecond), f.RewrittenWrites, f.ResentFrames)
}

// RunBackup accepts the primary, checks its start header against the
// backup's own machine, and replays the log until it ends, the guest
// stops, or the backup diverges.
func RunBackup(ctx context.Context, cfg BackupConfig) (*BackupResult, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Instance.Pair == "" {
		cfg.Instance.Pair = cfg.Pair // a storage server's disks belong to the pair
	}
	if cfg.Arbiter != nil && cfg.Owner == "" {
		host, _ := os.Hostname()
		cfg.Owner = fmt.Sprintf("backup on %s pid %d", host, os.Getpid())
	}
	// Check this side's machine before anyone can connect: a missing image
	// or disk or a bad memory size is this side's mistake, said at once.
	if err := instance.Check(cfg.Instance); err != nil {
		return nil, fmt.Errorf("the backup's machine: %w", err)
	}
	if _, err := newHeader(cfg.Instance, time.Time{}); err != nil {
		return nil, fmt.Errorf("the backup's machine: %w", err)
	}
	var start string // the snapshot's Sum, "" to boot
	if cfg.Restore != "" {
		var err error
		if start, err = startSnapshot(cfg.Restore, cfg.Instance); err != nil {
			return nil, fmt.Errorf("the backup's machine: %w", err)
		}
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
	var resyncs int
	for {
		res, err := runBackupSession(ctx, cfg, ln, start, resyncs, log)
		var de *vm.DivergenceError
		if !cfg.Resync || !errors.As(err, &de) || ctx.Err() != nil {
			if res != nil {
				res.Resyncs = resyncs
			}
			return res, err
		}
		// Resync: this VM is wrong from exit de.Exit on; a fresh copy of
		// the primary's running state replaces it. The primary finds its
		// backup lost, wins the record and protects itself again here.
		resyncs++
		log.Warn("diverged from the primary; waiting for a fresh copy of its running state (resync)",
			"first_differing_exit", de.Exit, "err", err, "resyncs", resyncs)
		start = "" // a resync is a state transfer, never a boot or a file
	}
}

// runBackupSession is one primary's log from accept to its end: the start
// header, the VM's start (boot, snapshot or the primary's state), replay,
// and going live if the primary is lost.
func runBackupSession(ctx context.Context, cfg BackupConfig, ln *logchannel.Listener, start string, resyncs int, log *slog.Logger) (*BackupResult, error) {
	log.Info("backup waiting for the primary", "addr", ln.Addr().String(), "resyncs", resyncs)
	recv, err := ln.Accept(ctx)
	if err != nil {
		return nil, fmt.Errorf("accept the primary: %w", err)
	}
	defer recv.Close()
	// The record as this pair forms: a primary protecting its guest again
	// (after a failover or a lost backup) won a generation since this
	// backup started listening.
	var gen uint64
	if cfg.Arbiter != nil {
		rec, err := cfg.Arbiter.Read(ctx, cfg.Pair)
		if err != nil {
			return nil, fmt.Errorf("read the pair's arbiter record: %w", err)
		}
		gen = rec.Generation
	}

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
	own.Snapshot = start
	own.Transfer = hdr.Transfer && start == ""
	if d := hdr.mismatch(own); d != "" {
		return nil, fmt.Errorf("the primary runs another machine: %s", d)
	}
	recv.ReportReplayed(1)

	// When the channel failed: the failure detector's verdict, before the
	// backup has replayed what it holds.
	var detected atomic.Int64
	watchDone := make(chan struct{})
	defer close(watchDone)
	go func() {
		select {
		case <-recv.Done():
			detected.Store(time.Now().UnixNano())
		case <-watchDone:
		}
	}()
	// fetched is the last entry handed to the replayer. The replayer asks
	// for more only when it needs it, so while the guest runs on without
	// exits it reports nothing; a primary bounding the lag would then wait
	// for a report that a guest spinning for an interrupt in the next batch
	// never makes. So progress is also reported from here whenever the
	// replayer has used everything it was given.
	var fetched atomic.Uint64
	var repRef atomic.Pointer[replay.Replayer]
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-watchDone:
				return
			case <-t.C:
			}
			if rep := repRef.Load(); rep != nil && rep.Idle() {
				recv.ReportReplayed(fetched.Load())
			}
		}
	}()
	// The vCPU goroutine owns these: the replayer pulls the stream there,
	// and the backup's disks hand their writes over there.
	var (
		lastSeq    uint64
		primaryErr error
		handover   bool // the primary handed the guest over (planned)
		kept       keptWrites
	)
	rep := replay.NewStreamReplayer(func() ([]byte, error) {
		for {
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
			fetched.Store(seq)
			if isHandover(entry) {
				handover = true
				detected.Store(time.Now().UnixNano())
				continue
			}
			if !isReleased(entry) {
				return entry, nil
			}
			through, err := decodeReleased(entry)
			if err != nil {
				return nil, fmt.Errorf("log entry %d: %w", seq, err)
			}
			kept.released(through)
		}
	})

	repRef.Store(rep)

	var statusMu sync.Mutex
	state := "replaying"
	if hdr.Transfer {
		state = "receiving the running primary's state"
	}
	// The VM runs under runCtx; a survivor protected again stops it with
	// stopRun when it loses the arbiter's record to its new backup.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	var (
		protMu     sync.Mutex
		protecting bool
		protected  *Primary
		protFinish func(vm.StopReason, error) (*PrimaryResult, error)
		transfer   TransferResult
	)
	var timeline FailoverTimeline
	var failover *FailoverTimeline // a copy of timeline once live, for status
	var keptN, keptBytes int
	setState := func(s string) {
		statusMu.Lock()
		state = s
		statusMu.Unlock()
	}
	icfg := cfg.Instance
	var replayer vm.Replayer = rep
	if cfg.WrapReplayer != nil {
		replayer = cfg.WrapReplayer(rep)
	}
	icfg.Replay, icfg.Record, icfg.Backup, icfg.WallTime = replayer, nil, true, hdr.WallTime
	icfg.KeepBackupFrame = func(frame []byte) { kept.keepFrame(lastSeq, frame) }
	icfg.Waiting = func(why string) { setState(fmt.Sprintf("won generation %d; waiting to go live: %s", gen, why)) }
	icfg.KeepBackupWrite = func(disk int, off int64, p []byte) {
		kept.keep(lastSeq, disk, off, p)
		statusMu.Lock()
		keptN, keptBytes = len(kept.writes), kept.bytes
		statusMu.Unlock()
	}
	icfg.LogEnded = recv.Done()
	var inst *instance.Instance
	var protect ProtectFunc
	icfg.GoLive = func() (vm.LiveInputs, error) {
		if primaryErr == nil && !handover || cfg.Arbiter == nil {
			return vm.LiveInputs{}, vm.ErrLogEnd // a clean end, or no say in it
		}
		why := primaryErr
		if handover {
			why = errors.New("the primary handed the guest over (planned switchover)")
		}
		lostAt := time.Now()
		if d := detected.Load(); d != 0 {
			lostAt = time.Unix(0, d)
		}
		timeline = FailoverTimeline{PrimaryLost: lostAt, Why: why, Drained: time.Since(lostAt)}
		setState(fmt.Sprintf("primary lost (%v): claiming the arbiter's record", why))
		log.Warn("primary lost; every entry received is replayed; claiming the pair's record", "err", why, "generation", gen)
		rec, err := claimUntilAnswered(ctx, cfg.Arbiter, cfg.Pair, cfg.Owner, gen, log, setState)
		timeline.Claimed = time.Since(lostAt)
		if err != nil {
			setState("halted: " + err.Error())
			return vm.LiveInputs{}, err
		}
		gen = rec.Generation
		timeline.Generation = gen
		in, err := inst.GoLive(ctx, gen, func(disk int, d virtio.BlockBackend) error {
			n, err := kept.rewrite(disk, d)
			timeline.RewrittenWrites += n
			return err
		}, func(send func([]byte)) { timeline.ResentFrames = kept.resend(send) })
		if err != nil {
			setState("halted: " + err.Error())
			return vm.LiveInputs{}, err
		}
		timeline.Live = time.Since(lostAt)
		statusMu.Lock()
		wentLive := timeline
		failover = &wentLive
		statusMu.Unlock()
		setState(fmt.Sprintf("live: won generation %d after the primary was lost; unprotected", gen))
		log.Warn("live: the guest runs on here", "generation", gen, "timeline", timeline.String())
		if cfg.Live != nil {
			cfg.Live(protect)
		}
		return in, nil
	}
	inst, err = instance.New(ctx, icfg)
	if err != nil {
		return nil, err
	}
	defer inst.Close()
	protect = func(pctx context.Context, pcfg PrimaryConfig, opts TransferOptions) (TransferResult, error) {
		// protMu is not held during the copy: status reads it meanwhile.
		protMu.Lock()
		if protected != nil || protecting {
			protMu.Unlock()
			return TransferResult{}, errors.New("the survivor is protected already, or being protected")
		}
		protecting = true
		protMu.Unlock()
		defer func() {
			protMu.Lock()
			protecting = false
			protMu.Unlock()
		}()
		if pcfg.Arbiter == nil {
			pcfg.Arbiter, pcfg.Pair = cfg.Arbiter, cfg.Pair
		}
		if pcfg.Logger == nil {
			pcfg.Logger = log
		}
		setState("live; protecting: copying the running VM to a new backup at " + pcfg.Peer)
		p, res, err := Protect(pctx, inst, runCtx, stopRun, pcfg, opts)
		if err != nil {
			setState(fmt.Sprintf("live: generation %d; unprotected (protecting failed: %v)", gen, err))
			return res, err
		}
		protMu.Lock()
		protected, transfer = p, res
		protFinish = p.Start(ctx)
		protMu.Unlock()
		log.Info("protected again: the survivor is the primary of a new pair", "backup", pcfg.Peer, "transfer", res.String())
		return res, nil
	}
	switch {
	case start != "":
		if err := restoreStart(inst, cfg.Restore, start); err != nil {
			return nil, err
		}
	case hdr.Transfer:
		seq, err := receiveTransfer(inst, func() (uint64, []byte, error) {
			seq, e, err := recv.Next(ctx)
			if err == nil {
				recv.ReportReplayed(seq)
			}
			return seq, e, err
		}, func(round int, bytes int64) {
			setState(fmt.Sprintf("receiving the running primary's state: round %d done, %.1f MiB", round, float64(bytes)/(1<<20)))
		})
		if err != nil {
			return nil, err
		}
		lastSeq = seq
		fetched.Store(seq)
		setState("replaying")
		log.Info("the running primary's state is loaded; replaying its log", "exit", inst.VM.ExitNumber())
	}

	status := func() BackupStatus {
		statusMu.Lock()
		defer statusMu.Unlock()
		le, e := rep.Progress()
		if failover != nil {
			// Live: the replayer stopped where the log ended; the guest
			// goes on counting exits.
			e = inst.VM.Exits()
		}
		st := BackupStatus{State: state, Generation: gen, KeptWrites: keptN, KeptBytes: keptBytes, Resyncs: resyncs,
			Log: recv.Stats(), LogExit: le, Exit: e, Replayer: rep.Stats(), Failover: failover}
		protMu.Lock()
		if protected != nil {
			ps := protected.Status()
			tr := transfer
			st.Primary, st.Transfer = &ps, &tr
		}
		protMu.Unlock()
		return st
	}
	if cfg.Running != nil {
		cfg.Running(status)
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
	reason, runErr := inst.Run(runCtx)
	close(stopStatus)
	wg.Wait()
	res := &BackupResult{Reason: reason, Stats: inst.VM.Stats(), PrimaryErr: primaryErr}
	protMu.Lock()
	finish := protFinish
	protMu.Unlock()
	if finish != nil {
		// The survivor was the primary of a new pair: end that pair as a
		// primary's Run ends (last outputs, clean close of the log).
		pres, perr := finish(reason, runErr)
		res.Protected = pres
		res.WentLive, res.Failover = true, timeline
		res.Final = status()
		res.Final.State = "stopped: " + reason.String()
		return res, perr
	}
	res.WentLive, res.Failover = res.Stats.WentLive, timeline
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

// claimUntilAnswered claims the pair's record from generation seen, asking
// again while the arbiter cannot be reached (a side never acts alone on a
// guess). A lost claim is a *LostArbitrationError.
func claimUntilAnswered(ctx context.Context, arb arbiter.Arbiter, pair, owner string, seen uint64, log *slog.Logger, setState func(string)) (arbiter.Record, error) {
	pause := 50 * time.Millisecond
	for {
		rec, err := arb.Claim(ctx, pair, owner, seen)
		switch {
		case err == nil:
			return rec, nil
		case errors.Is(err, arbiter.ErrLostClaim):
			return arbiter.Record{}, &LostArbitrationError{Err: err}
		case errors.Is(err, arbiter.ErrAhead), errors.Is(err, arbiter.ErrInvalid):
			// Asking again cannot help: a bad pair name or a record
			// changed by hand.
			return arbiter.Record{}, fmt.Errorf("claim the pair's record: %w", err)
		case ctx.Err() != nil:
			return arbiter.Record{}, fmt.Errorf("claim the pair's record: %w", ctx.Err())
		}
		setState(fmt.Sprintf("cannot reach the arbiter (%v): not acting alone, asking again", err))
		log.Warn("arbiter unreachable; waiting", "err", err, "retry_in", pause)
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}
