package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/ftvm/ftvm/hypervisor/virtio"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/snapshot"
	"github.com/ftvm/ftvm/storage/arbiter"
)

// PrimaryConfig runs a VM as the primary of a pair.
type PrimaryConfig struct {
	// Instance is the VM; its Record, Backup, WrapTransmit, WrapDisk and
	// WallTime are set by the primary.
	Instance instance.Config
	// Restore, if set, is a full snapshot file the pair starts from
	// instead of booting (fast start): the primary records from its state,
	// and the start header names it so the backup must start from it too.
	Restore string
	// Peer is the backup's log channel address (unix:/path or host:port).
	// Conn, if set, is used instead (tests).
	Peer string
	// Log tunes the log channel (heartbeats, timeout, window).
	Log logchannel.Config
	// MaxLag bounds how far behind the backup may fall, as the age of the
	// oldest log entry it has not replayed: past it the guest waits at its
	// next log flush. A backup goes live only after replaying everything
	// it received, so this bounds the failover pause. Default
	// DefaultMaxLag; negative: no bound. Log.MaxReplayLagTime, if set,
	// wins.
	MaxLag time.Duration
	// Recorder tunes the recording (digest interval, batch size).
	Recorder replay.RecorderOptions
	// FlushInterval bounds how long a log entry waits in the recorder
	// before it is handed to the channel when no output forces it out.
	// Default 2 ms.
	FlushInterval time.Duration
	// StatusEvery logs a status line this often (0: never).
	StatusEvery time.Duration
	Logger      *slog.Logger
	// OnRelease, if set, is told of every output as it leaves (tests).
	OnRelease func(Released)
	// BeforeDiskRelease, if set, runs before each held disk write is
	// issued (tests: hold a released write back to prove fencing).
	BeforeDiskRelease func()
	// Arbiter, if set, decides what happens when the backup is lost: the
	// primary claims Pair's record from the generation it read at start.
	// If it wins it releases every held output and runs on unprotected;
	// if the backup claimed first (it goes live) the primary stops without
	// releasing anything; while the arbiter cannot be reached it holds its
	// outputs and retries. Without an Arbiter a lost backup leaves the
	// outputs held until the primary is stopped.
	Arbiter arbiter.Arbiter
	// Pair names the pair's record; Owner this side in it (default
	// "primary on HOST pid N").
	Pair, Owner string
	// ConsoleLive lets the guest's console bytes out as they are printed,
	// not held under the output rule: for debugging a guest that hangs
	// before the backup acks anything. A console line may then announce
	// what a failover loses.
	ConsoleLive bool
	// Connected, if set, is called once the log channel is up.
	Connected func()
	// ProtectAgain: once the backup is lost and this primary won the
	// arbiter's record, make a new backup at Peer from the running guest
	// (Protect), asking every second while nothing listens there: a
	// backup with BackupConfig.Resync listens there again after it
	// diverged; a supervisor starts a new one after a crash. The primary
	// is unprotected only from the loss to the end of the copy.
	ProtectAgain bool
}

// DefaultMaxLag is how far (in time) a backup may fall behind its primary
// unless configured: a failover replays at most about this much log.
const DefaultMaxLag = time.Second

// PrimaryStatus is what a primary reports about itself.
type PrimaryStatus struct {
	// State is "connecting", "replicating", "backup lost: outputs held,
	// guest paused at its next output" or "stopped".
	State     string
	BackupErr error // why the backup was lost
	// Generation is the arbiter record's generation this side last saw
	// or won (0 without an arbiter).
	Generation uint64
	Log        logchannel.Stats
	Recorder   replay.RecorderStats
	Outputs    GateStats
	// ProtectedAgain counts the new backups this primary made from its
	// running guest after losing one (ProtectAgain).
	ProtectedAgain int
}

func (s PrimaryStatus) String() string {
	msg := fmt.Sprintf("primary %s: log %d entries %.2f Mbit/s, unacked %d B, backup lag %d entries %v (minute p50 %v p99 %v); outputs held %d (oldest %v), released %d frames %d writes; digests %d, output hashes %d, checkpoints %d",
		s.State, s.Log.Entries, s.Log.BytesPerSec*8/1e6, s.Log.UnackedBytes, s.Log.LagEntries, s.Log.LagTime.Round(time.Millisecond),
		s.Log.LagP50.Round(time.Millisecond), s.Log.LagP99.Round(time.Millisecond),
		s.Outputs.HeldOutputs, s.Outputs.OldestHeld.Round(time.Millisecond), s.Outputs.ReleasedFrames, s.Outputs.ReleasedWrites,
		s.Recorder.Digests, s.Recorder.Outputs, s.Recorder.Checkpoints)
	if s.ProtectedAgain > 0 {
		msg += fmt.Sprintf("; protected again %d times after losing a backup", s.ProtectedAgain)
	}
	if s.BackupErr != nil {
		msg += "; backup: " + s.BackupErr.Error()
	}
	return msg
}

// Primary is a running primary.
type Primary struct {
	cfg    PrimaryConfig
	log    *slog.Logger
	sender *logchannel.Sender
	rec    *replay.Recorder
	gate   *Gate
	inst   *instance.Instance
	// runCtx is the VM's lifetime; stopVM ends it with a cause (a failed
	// disk release).
	runCtx context.Context
	stopVM context.CancelCauseFunc

	// ownsInst: the primary made inst (NewPrimary) and closes it; a VM
	// protected while running (Protect) belongs to its caller.
	ownsInst bool

	mu      sync.Mutex
	lastSeq uint64 // the last log entry appended; under the recorder's lock
	state   string
	lost    error
	gen     uint64 // the arbiter's generation seen at start, or won
	// arbitrating is closed once, when the backup is first found lost
	// and the claim starts.
	arbitrating chan struct{}
	arbOnce     sync.Once

	// next is the primary this one handed the VM's recording to when it
	// protected the guest again after losing its backup (ProtectAgain);
	// nextFinish ends it. Under mu.
	next       *Primary
	nextFinish func(vm.StopReason, error) (*PrimaryResult, error)
	// again counts those re-protections (its own and its successors').
	again int
}

// PrimaryResult is how a primary's run ended.
type PrimaryResult struct {
	// HandedOver: a planned switchover completed; the backup goes live.
	HandedOver bool
	Reason     vm.StopReason
	Stats      vm.Stats
	Final      PrimaryStatus
}

// RunPrimary connects to the backup, sends the start header, boots the VM
// recording into the log channel and runs it until it stops or ctx ends.
// conn, if non-nil, is an established connection to the backup (tests).
func RunPrimary(ctx context.Context, cfg PrimaryConfig) (*PrimaryResult, error) {
	p, err := NewPrimary(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Run(ctx)
}

// NewPrimary dials the backup and prepares the VM.
func NewPrimary(ctx context.Context, cfg PrimaryConfig) (_ *Primary, err error) {
	cfg.setDefaults()
	p := newPrimary(cfg)
	p.ownsInst = true
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if cfg.Instance.Pair == "" {
		cfg.Instance.Pair = cfg.Pair // a storage server's disks belong to the pair
	}
	p.cfg.Instance.Pair = cfg.Instance.Pair
	if err := instance.Check(cfg.Instance); err != nil {
		return nil, fmt.Errorf("the primary's machine: %w", err)
	}
	if err := p.readArbiter(ctx); err != nil {
		return nil, err
	}
	wall := time.Now()
	hdr, err := newHeader(cfg.Instance, wall)
	if err != nil {
		return nil, err
	}
	if cfg.Restore != "" {
		if hdr.Snapshot, err = startSnapshot(cfg.Restore, cfg.Instance); err != nil {
			return nil, err
		}
	}
	if err := p.connect(ctx, hdr); err != nil {
		return nil, err
	}
	runCtx, stopVM := context.WithCancelCause(ctx)
	p.runCtx, p.stopVM = runCtx, stopVM
	p.startRecording()

	icfg := cfg.Instance
	icfg.Record, icfg.Backup, icfg.WallTime = p.rec, false, wall
	if icfg.Pair == "" {
		icfg.Pair = cfg.Pair
	}
	icfg.Generation = p.gen // writes to a storage server's disks carry it
	wrap := p.outputWrappers()
	if wrap.Console != nil && icfg.Console != nil {
		icfg.Console = wrap.Console(icfg.Console)
	}
	icfg.WrapTransmit, icfg.WrapDisk = wrap.Transmit, wrap.Disk
	if p.inst, err = instance.New(ctx, icfg); err != nil {
		return nil, err
	}
	if cfg.Restore != "" {
		if err := restoreStart(p.inst, cfg.Restore, hdr.Snapshot); err != nil {
			return nil, err
		}
	}
	p.setState("replicating", nil)
	if cfg.Connected != nil {
		cfg.Connected()
	}
	return p, nil
}

// emit hands a batch to the log channel. It runs with the recorder's lock
// held. Once the backup is lost the log goes nowhere: the primary keeps
// running and holds its outputs (failover decides what happens next).
func (p *Primary) emit(batch []byte) error {
	if p.lostErr() != nil {
		return nil
	}
	seq, err := p.sender.Append(context.Background(), batch)
	if err != nil {
		p.backupLost(p.sender.Err())
		return nil
	}
	p.lastSeq = seq
	return nil
}

func (p *Primary) setState(s string, lost error) {
	p.mu.Lock()
	p.state = s
	if lost != nil && p.lost == nil {
		p.lost = lost
	}
	p.mu.Unlock()
}

func (p *Primary) lostErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lost
}

// Status reports the primary's state now: once it protected the guest
// again after losing its backup, its successor's.
func (p *Primary) Status() PrimaryStatus {
	p.mu.Lock()
	if next := p.next; next != nil {
		again := p.again
		p.mu.Unlock()
		st := next.Status()
		st.ProtectedAgain += again
		return st
	}
	st := PrimaryStatus{State: p.state, BackupErr: p.lost, Generation: p.gen}
	p.mu.Unlock()
	if p.sender != nil {
		st.Log = p.sender.Stats()
	}
	if p.rec != nil {
		st.Recorder = p.rec.Stats()
	}
	if p.gate != nil {
		st.Outputs = p.gate.Stats()
	}
	return st
}

// Run runs the VM until it stops. When it does, the primary waits (up to
// a few seconds) for the backup to acknowledge the rest of the log so the
// last outputs leave, then closes the channel cleanly.
func (p *Primary) Run(ctx context.Context) (*PrimaryResult, error) {
	stopBG := p.start(ctx)
	reason, runErr := p.inst.Run(p.runCtx)
	return p.finish(stopBG, reason, runErr)
}

// start starts the releaser and the flusher, which outlive ctx: when the
// caller stops the VM (Ctrl-C), the last outputs must still leave once
// acknowledged. It returns the function that stops them.
func (p *Primary) start(ctx context.Context) (stop func()) {
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.gate.run(bg) }()
	go func() { defer wg.Done(); p.background(bg) }()
	return func() { stopBG(); wg.Wait() }
}

// finish ends a primary whose VM stopped (Run's second half): the last
// outputs, a handover if one was asked for, the channel's clean close.
func (p *Primary) finish(stopBG func(), reason vm.StopReason, runErr error) (*PrimaryResult, error) {
	// A successor's gate sits in front of this one's: it lets its outputs
	// out (into this gate, alone since the loss) first.
	p.mu.Lock()
	nextFinish := p.nextFinish
	p.mu.Unlock()
	var nextRes *PrimaryResult
	var nextErr error
	if nextFinish != nil {
		nextRes, nextErr = nextFinish(reason, runErr)
		runErr = nil // reported by the successor
	}
	res, err := p.finishOwn(stopBG, reason, runErr)
	if nextRes != nil {
		res.Final, res.HandedOver = nextRes.Final, nextRes.HandedOver
		res.Final.ProtectedAgain = p.Status().ProtectedAgain
	}
	var held *HeldOutputsError
	if nextFinish != nil && errors.As(err, &held) {
		err = nil // this primary's own gate is alone: its held count was the successor's to drain
	}
	return res, errors.Join(nextErr, err)
}

func (p *Primary) finishOwn(stopBG func(), reason vm.StopReason, runErr error) (*PrimaryResult, error) {
	closeErr := p.rec.Close()
	if p.lostErr() == nil && p.sender.Err() == nil && p.gate.Err() == nil {
		// Let the last outputs out: everything is flushed and sealed.
		p.gate.seal(p.lastSeq)
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := p.sender.WaitAcked(wctx, p.lastSeq); err == nil {
			for p.gate.Stats().HeldOutputs > 0 && wctx.Err() == nil {
				time.Sleep(time.Millisecond)
			}
		}
		cancel()
	}
	if p.gate.isAlone() && p.gate.Err() == nil {
		// Unprotected: what is held leaves without acks; let it drain.
		for deadline := time.Now().Add(10 * time.Second); p.gate.Stats().HeldOutputs > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	stopBG()
	handedOver := false
	if errors.Is(context.Cause(p.runCtx), errHandover) && p.lostErr() == nil && p.gate.Err() == nil {
		// The last released marker, then the handover: the backup re-issues
		// only what did not leave, and goes live.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		// Every write is out; the backup opens the disks next.
		if err := p.inst.CloseDisks(); err != nil {
			p.log.Warn("close the disks for the handover", "err", err)
		}
		_, err1 := p.sender.Append(ctx, encodeReleased(p.gate.lastReleased()))
		seq, err2 := p.sender.Append(ctx, handoverEntry)
		if err := errors.Join(err1, err2); err == nil {
			handedOver = p.sender.WaitAcked(ctx, seq) == nil
		}
		cancel()
	}
	// A clean close tells the backup the log ends here; it replays the
	// rest and stops where the primary did (or goes live, after a
	// handover).
	if err := p.sender.Close(); err != nil && !errors.Is(err, logchannel.ErrClosed) && p.lostErr() == nil {
		p.log.Warn("close the log channel", "err", err)
	}
	// The VM has stopped and nothing more will be released: let go of the
	// disks now, not at Close, so a backup taking over can open them.
	if !handedOver {
		if err := p.inst.CloseDisks(); err != nil {
			p.log.Warn("close the disks", "err", err)
		}
	}
	res := &PrimaryResult{Reason: reason, Stats: p.inst.VM.Stats(), Final: p.Status(), HandedOver: handedOver}
	res.Final.State = "stopped"
	if handedOver {
		res.Final.State = "handed over to the backup"
	}
	var errs []error
	if err := p.gate.Err(); err != nil {
		errs = append(errs, err)
	}
	var lostArb *LostArbitrationError
	if errors.As(context.Cause(p.runCtx), &lostArb) {
		errs = append(errs, lostArb)
	}
	if errors.Is(context.Cause(p.runCtx), errHandover) && !handedOver {
		errs = append(errs, errors.New("the handover to the backup did not complete: it did not acknowledge the log within 10 s"))
	}
	if runErr != nil && !errors.Is(runErr, context.Cause(p.runCtx)) {
		errs = append(errs, runErr)
	}
	if closeErr != nil {
		errs = append(errs, fmt.Errorf("log: %w", closeErr))
	}
	if held := res.Final.Outputs; held.HeldOutputs > 0 && lostArb == nil {
		errs = append(errs, &HeldOutputsError{Stats: held, Why: p.heldWhy()})
	}
	return res, errors.Join(errs...)
}

// heldWhy says why outputs could not be released.
func (p *Primary) heldWhy() string {
	if err := p.gate.Err(); err != nil {
		return "a disk output before them failed"
	}
	if err := p.lostErr(); err != nil {
		return fmt.Sprintf("the backup was lost (%v), so nothing was acknowledged", err)
	}
	if err := p.sender.Err(); err != nil && !errors.Is(err, logchannel.ErrClosed) {
		return fmt.Sprintf("the log channel failed (%v)", err)
	}
	return "the backup did not acknowledge their log within 10 s of the stop"
}

// HeldOutputsError says a primary stopped while outputs were still held:
// they never left. The guest was told its held disk writes and flushes were
// done, so its disk lacks data the guest may have acknowledged to a client;
// held frames and console bytes were never seen outside. A backup that goes
// live re-executes from the log and produces them again (failover).
type HeldOutputsError struct {
	Stats GateStats
	Why   string
}

func (e *HeldOutputsError) Error() string {
	s := e.Stats
	return fmt.Sprintf("stopped with %d outputs held and never released (%d frames, %d disk writes, %d disk flushes, %d console pieces; %d bytes; oldest held %v) because %s: "+
		"the guest was told those disk writes were done, so this disk may lack data the guest acknowledged; only the backup, going live, can produce them again",
		s.HeldOutputs, s.HeldFrames, s.HeldWrites, s.HeldFlushes, s.HeldConsole, s.HeldBytes, s.OldestHeld.Round(time.Millisecond), e.Why)
}

// consoleOutput is the guest console as the primary sees it: every write is
// an output for the gate.
type consoleOutput func([]byte)

func (c consoleOutput) Write(p []byte) (int, error) { c(p); return len(p), nil }

// backupLost notes that the backup is gone (why) and, once, starts the
// arbitration. It may run with the recorder's lock held: it only signals.
func (p *Primary) backupLost(why error) {
	p.arbOnce.Do(func() {
		state := "backup lost: outputs held, guest paused at its next output"
		if p.cfg.Arbiter != nil {
			state = "backup lost: claiming the arbiter's record; outputs held meanwhile"
		}
		p.setState(state, why)
		p.log.Error("log channel to the backup lost", "err", why, "arbiter", p.cfg.Arbiter != nil)
		close(p.arbitrating)
	})
}

// LostArbitrationError stops a side of a pair whose peer claimed the
// pair's record first: the peer acts alone now, so this side must release
// nothing more. A primary's held outputs are the backup's to produce.
type LostArbitrationError struct {
	Err error // the arbiter's answer (an *arbiter.LostClaimError)
}

func (e *LostArbitrationError) Error() string {
	return fmt.Sprintf("the other side of the pair won the arbiter's record and acts alone now; this side stops and releases nothing more: %v", e.Err)
}

func (e *LostArbitrationError) Unwrap() error { return e.Err }

// arbitrate claims the pair's record after the backup was lost: a win lets
// every held output out and the primary runs on unprotected; a loss stops
// the VM; while the arbiter cannot be reached the outputs stay held.
func (p *Primary) arbitrate(ctx context.Context) {
	p.mu.Lock()
	seen := p.gen
	p.mu.Unlock()
	rec, err := claimUntilAnswered(ctx, p.cfg.Arbiter, p.cfg.Pair, p.cfg.Owner, seen, p.log, func(s string) { p.setState("backup lost: "+s, nil) })
	var lost *LostArbitrationError
	switch {
	case errors.As(err, &lost):
		p.setState("halted: the backup won the arbiter's record (it goes live); nothing more leaves this side", nil)
		p.log.Error("lost the arbiter's record to the backup; stopping", "err", err)
		p.stopVM(lost)
	case err != nil: // stopped meanwhile
	default:
		p.mu.Lock()
		p.gen = rec.Generation
		p.state = fmt.Sprintf("unprotected: the backup was lost and this primary won generation %d; outputs flow without a backup", rec.Generation)
		p.mu.Unlock()
		p.log.Warn("won the arbiter's record: running on without a backup", "generation", rec.Generation)
		p.inst.SetGeneration(rec.Generation)
		p.gate.goAlone()
		if p.cfg.ProtectAgain {
			go p.protectAgain(ctx)
		}
	}
}

// background flushes the recorder on a timer, notices a lost backup, and
// logs status lines.
func (p *Primary) background(ctx context.Context) {
	flush := time.NewTicker(p.cfg.FlushInterval)
	defer flush.Stop()
	var status <-chan time.Time
	if p.cfg.StatusEvery > 0 {
		t := time.NewTicker(p.cfg.StatusEvery)
		defer t.Stop()
		status = t.C
	}
	done := p.sender.Done()
	arbitrating := p.arbitrating
	var releasedSent uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-flush.C:
			p.rec.Flush()
			// Tell the backup how far releases got: on going live it
			// re-issues only the disk writes after that.
			if r := p.gate.lastReleased(); r > releasedSent && p.lostErr() == nil {
				if _, err := p.sender.Append(ctx, encodeReleased(r)); err == nil {
					releasedSent = r
				}
			}
		case <-done:
			done = nil
			p.backupLost(p.sender.Err())
		case <-arbitrating:
			arbitrating = nil
			if p.cfg.Arbiter != nil {
				go p.arbitrate(ctx)
			}
		case <-status:
			p.log.Info(p.Status().String())
		}
	}
}

// errHandover is why a primary's VM stops for a planned switchover.
var errHandover = errors.New("handing the guest over to the backup")

// Handover asks for a planned switchover: the VM stops at its next exit,
// the primary waits until the backup acknowledged the whole log and every
// output left, then tells the backup to go live where the log ends and
// closes the channel; Run returns with HandedOver set. Nothing is lost:
// the backup holds everything the guest did. The backup must have an
// arbiter (it claims the pair's record; this side does not).
func (p *Primary) Handover() { p.stopVM(errHandover) }

// Close releases the VM and the log channel.
func (p *Primary) Close() error {
	if p.stopVM != nil {
		p.stopVM(nil)
	}
	var errs []error
	if p.inst != nil && p.ownsInst {
		errs = append(errs, p.inst.Close())
	}
	if p.sender != nil {
		if err := p.sender.Close(); err != nil && !errors.Is(err, logchannel.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// VM is the primary's virtual machine (for reports after Run).
func (p *Primary) VM() *vm.VM { return p.inst.VM }

// KernelKickPoints says at which kernel RIPs watchdog kicks stopped the
// guest, and how often (replay.Recorder.KernelKickPoints); nil before the
// primary records.
func (p *Primary) KernelKickPoints() map[uint64]uint64 {
	if p.rec == nil {
		return nil
	}
	return p.rec.KernelKickPoints()
}

// setDefaults fills in what cfg leaves zero.
func (cfg *PrimaryConfig) setDefaults() {
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 2 * time.Millisecond
	}
	if cfg.Log.MaxReplayLagTime == 0 {
		switch {
		case cfg.MaxLag == 0:
			cfg.Log.MaxReplayLagTime = DefaultMaxLag
		case cfg.MaxLag > 0:
			cfg.Log.MaxReplayLagTime = cfg.MaxLag
		}
	}
}

func newPrimary(cfg PrimaryConfig) *Primary {
	p := &Primary{cfg: cfg, log: cfg.Logger, state: "connecting", arbitrating: make(chan struct{})}
	if p.log == nil {
		p.log = slog.Default()
	}
	return p
}

// readArbiter reads the generation this side starts from.
func (p *Primary) readArbiter(ctx context.Context) error {
	if p.cfg.Arbiter == nil {
		return nil
	}
	if p.cfg.Owner == "" {
		host, _ := os.Hostname()
		p.cfg.Owner = fmt.Sprintf("primary on %s pid %d", host, os.Getpid())
	}
	rec, err := p.cfg.Arbiter.Read(ctx, p.cfg.Pair)
	if err != nil {
		return fmt.Errorf("read the pair's arbiter record: %w", err)
	}
	p.gen = rec.Generation
	return nil
}

// connect dials the backup and sends the start header.
func (p *Primary) connect(ctx context.Context, hdr startHeader) error {
	network, addr, err := splitAddr(p.cfg.Peer)
	if err != nil {
		return err
	}
	if p.sender, err = logchannel.Dial(ctx, network, addr, p.cfg.Log); err != nil {
		return fmt.Errorf("connect to the backup at %s (is 'ftctl run --role backup --listen %s' running?): %w", p.cfg.Peer, p.cfg.Peer, err)
	}
	hb, err := hdr.encode()
	if err != nil {
		return err
	}
	if p.lastSeq, err = p.sender.Append(ctx, hb); err != nil {
		return fmt.Errorf("send the start header: %w", err)
	}
	return nil
}

// outputWrappers put the gate in front of the guest's outputs (the output
// rule): at creation for a primary that boots, at the switch to recording
// for a VM protected while it runs. p.gate, p.rec and p.runCtx must be set.
func (p *Primary) outputWrappers() instance.OutputWrappers {
	runCtx := p.runCtx
	w := instance.OutputWrappers{
		Transmit: func(send func([]byte)) func([]byte) {
			p.gate.send = send
			return func(frame []byte) {
				p.gate.add(runCtx, output{kind: OutputFrame, data: append([]byte(nil), frame...)})
				p.rec.NoteOutput()
			}
		},
		Disk: func(i int, d virtio.BlockBackend) virtio.BlockBackend {
			for len(p.gate.disks) <= i {
				p.gate.disks = append(p.gate.disks, nil)
			}
			p.gate.disks[i] = d
			return &gatedDisk{ctx: runCtx, disk: d, index: i, gate: p.gate, noted: p.rec.NoteOutput}
		},
	}
	if !p.cfg.ConsoleLive {
		w.Console = func(out io.Writer) io.Writer {
			p.gate.console = out
			return consoleOutput(func(b []byte) {
				p.gate.addConsole(runCtx, b)
				p.rec.NoteLazyOutput()
			})
		}
	}
	return w
}

// startRecording makes the output gate and the recorder feeding the log
// channel (p.sender, p.stopVM set): a held disk output that fails stops
// the VM.
func (p *Primary) startRecording() {
	p.gate = newGate(p.sender, nil, p.cfg.OnRelease)
	p.gate.beforeDisk = p.cfg.BeforeDiskRelease
	p.gate.onFail = func(err error) {
		p.log.Error("a held disk output failed: nothing after it is released; stopping the VM", "err", err)
		p.stopVM(err)
	}
	ropts := p.cfg.Recorder
	ropts.OutputsLogged = func() { p.gate.seal(p.lastSeq) }
	p.rec = replay.NewRecorder(p.emit, ropts)
}

// protectAgain makes a new backup at the configured peer from the running
// guest, after this primary lost its backup and won the record: the new
// pair's primary takes over the recording (see Protect); this one stays,
// alone, behind it.
func (p *Primary) protectAgain(ctx context.Context) {
	p.log.Warn("protecting the guest again: copying it to a new backup while it runs", "peer", p.cfg.Peer)
	for ctx.Err() == nil && p.runCtx.Err() == nil {
		cfg := p.cfg
		cfg.Connected, cfg.StatusEvery = nil, 0 // this primary's status lines show the successor's
		next, res, err := Protect(ctx, p.inst, p.runCtx, p.stopVM, cfg, TransferOptions{})
		if err == nil {
			p.mu.Lock()
			p.next, p.nextFinish = next, next.Start(ctx)
			p.again++
			p.state = "protected again: " + res.String()
			p.mu.Unlock()
			p.log.Info("protected again: replicating to the new backup", "peer", p.cfg.Peer, "transfer", res.String())
			return
		}
		p.log.Warn("protect the guest again", "peer", p.cfg.Peer, "err", err, "retry_in", time.Second)
		select {
		case <-ctx.Done():
		case <-p.runCtx.Done():
		case <-time.After(time.Second):
		}
	}
}

// Snapshot writes a full snapshot of the primary's running VM to w at its
// next exit (instance.Snapshot); the guest goes on. The kick that stops it
// there ships a checkpoint to the backup like any kick.
func (p *Primary) Snapshot(ctx context.Context, w io.Writer) (snapshot.Sum, error) {
	return p.inst.Snapshot(ctx, w, nil)
}
