package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/kvm"
	"golang.org/x/sys/unix"
)

// interruptController is the guest's interrupt controller as the exit loop
// sees it (the 8259 pair): whether it asserts INTR, and the INTA cycle.
type interruptController interface {
	devices.IRQSink
	Pending() bool
	Acknowledge() (vector uint8, ok bool)
}

// portBus routes port I/O to devices.
type portBus interface {
	Read(port uint16, data []byte)
	Write(port uint16, data []byte)
}

// consoleReceiver takes bytes typed at the console (the UART).
type consoleReceiver interface {
	Receive(b []byte) int
}

// StopReason says why a VM stopped running without an error.
type StopReason int

const (
	// StoppedPowerOff: the guest powered the machine off.
	StoppedPowerOff StopReason = iota + 1
	// StoppedReset: the guest reset the machine (a reboot, or a panic with
	// panic=N). ftvm does not reboot guests in place.
	StoppedReset
	// StoppedCancelled: the caller's context ended (Ctrl-C).
	StoppedCancelled
	// StoppedHalted: the guest halted with interrupts disabled, which
	// nothing on this machine can wake (no NMI sources). Linux does this
	// ("System halted") when it cannot power off.
	StoppedHalted
	// StoppedLogEnd: a backup replayed everything in its log.
	StoppedLogEnd
)

func (r StopReason) String() string {
	switch r {
	case StoppedPowerOff:
		return "powered off"
	case StoppedReset:
		return "reset"
	case StoppedCancelled:
		return "stopped"
	case StoppedHalted:
		return "halted with interrupts disabled"
	case StoppedLogEnd:
		return "replayed to the end of the log"
	}
	return fmt.Sprintf("StopReason(%d)", int(r))
}

// maxExitKinds bounds the per-kind exit counters; KVM's exit reasons are
// small numbers, and anything beyond lands in the last slot.
const maxExitKinds = 64

// Stats counts what the exit loop did. Read it only after Run returned.
type Stats struct {
	Exits      [maxExitKinds]uint64 // by kvm.ExitKind
	Injected   uint64               // interrupts injected with KVM_INTERRUPT
	Windows    uint64               // interrupt windows requested
	Kicks      uint64               // liveness kicks of a guest that did not exit
	SyncExits  uint64               // synchronous exits: the replay clock
	HaltedTime time.Duration        // time spent waiting in HLT
	// WentLive: a backup whose log ended went live at exit WentLiveAt.
	WentLive   bool
	WentLiveAt uint64
	// PortExits counts port I/O exits by port: where the exit budget goes.
	PortExits map[uint16]uint64
}

// TopPorts lists the n ports with the most exits, most first, as
// "0x608:1234" strings.
func (s Stats) TopPorts(n int) []string {
	type pc struct {
		port  uint16
		count uint64
	}
	var all []pc
	for p, c := range s.PortExits {
		all = append(all, pc{p, c})
	}
	sort.Slice(all, func(i, j int) bool {
		return all[i].count > all[j].count || all[i].count == all[j].count && all[i].port < all[j].port
	})
	var out []string
	for i := 0; i < len(all) && i < n; i++ {
		out = append(out, fmt.Sprintf("%#x:%d", all[i].port, all[i].count))
	}
	return out
}

// Total is the number of exits of all kinds.
func (s Stats) Total() uint64 {
	var n uint64
	for _, c := range s.Exits {
		n += c
	}
	return n
}

// ByKind lists the non-zero exit counters.
func (s Stats) ByKind() map[string]uint64 {
	m := map[string]uint64{}
	for k, c := range s.Exits {
		if c != 0 {
			m[kvm.ExitKind(k).String()] = c
		}
	}
	return m
}

// loop is the vCPU exit loop: it runs the vCPU, hands each exit to the
// devices, and injects interrupts only at exits (DESIGN.md rule 2).
type loop struct {
	vcpu    *kvm.VCPU
	bus     portBus
	mmioBus mmioBus
	pic     interruptController
	timers  []devices.Timer
	clock   devices.Clock
	console consoleReceiver
	input   *inputQueue
	frames  *frameInbox // nil without a network device

	// Set by devices during an exit, on the vCPU goroutine.
	powerOff, reset bool

	stats     Stats
	haltTimer *time.Timer

	// Shared with the liveness watchdog, which must never block KVM_RUN:
	// plain atomics, no locks.
	inRunSince   atomic.Int64 // guest ns when KVM_RUN was entered, 0 outside
	nextDeadline atomic.Int64 // earliest timer deadline in guest ns, -1 none
	kicks        atomic.Uint64
	// kickAfter is the watchdog's bound now (ns): LiveKickAfter, or
	// recordingKickAfter while the VM records (setKickAfter).
	kickAfter          atomic.Int64
	recordingKickAfter time.Duration
	// exits mirrors syncExits for readers on other goroutines (status).
	exits atomic.Uint64

	// Determinism: the number of synchronous exits so far, and at most one
	// of a recorder (primary) or replayer (backup). replayErr parks a
	// disagreement found where no error can be returned (a clock read).
	syncExits uint64
	ripFn     func() uint64 // l.currentRIP, bound once: no allocation per exit
	regs      kvm.Regs
	rec       Recorder
	rep       Replayer
	replayErr error
	// Going live (golive.go): goLive is asked where the log ends; liveErr
	// is its answer once it said no; lastReplayedClock is the last guest
	// time the log gave the devices; startWatchdog starts the liveness
	// watchdog a live VM needs (set by run).
	goLive            GoLiveFunc
	logEnded          <-chan struct{}
	live              atomic.Bool // set by tryGoLive, read by the end watcher
	liveErr           error
	lastReplayedClock time.Duration
	startWatchdog     func()
	// guest is the VM as the recorder and replayer see it (digests,
	// checkpoints).
	guest GuestState
	// noWindows: inject only at exits the guest's own instructions
	// caused, never through an interrupt-window exit. Replication sets
	// it: under a software CPU (the nested test host) a window exit lands
	// a few instructions apart between runs, so an interrupt injected
	// there would too. A pending interrupt waits for the next exit that
	// finds the guest ready (or for the watchdog, whose kick resyncs).
	noWindows bool
	// syncRegs: KVM copies the registers into kvm_run at every exit.
	syncRegs bool

	// mmioReported avoids logging every access to unbacked memory.
	mmioReported bool
	onMMIO       func(addr uint64, write bool)

	// requests is work asked of the vCPU goroutine between exits (AtExit).
	requests exitRequests
	// loadedAt: the machine state was loaded (LoadState) and the loop has
	// not yet run from it.
	loadedAt bool
}

// RequestPowerOff implements devices.PowerControl.
func (l *loop) RequestPowerOff() { l.powerOff = true }

// RequestReset implements devices.PowerControl.
func (l *loop) RequestReset() { l.reset = true }

// LiveKickAfter is how long the guest of a VM that records nothing may run
// without an exit while a timer is overdue before the watchdog kicks it.
// Linux exits constantly (PIO, HLT), so this only catches guests
// computing with interrupts deliverable; the kick is a signal, cheap.
const LiveKickAfter = 5 * time.Millisecond

// DefaultRecordingKickAfter is the same bound while the VM records for a
// backup, where a kick costs a checkpoint (see Config.RecordingKickAfter).
// Measured in the nested host (BenchmarkKickAfter, the kv guest's pair
// from power-on): 28 checkpoints in the boot at 5 ms, 7 at 20 ms, 3 at
// 50 ms, the boot as long; 20 ms keeps a computing guest's timer
// interrupts within a fiftieth of a second.
const DefaultRecordingKickAfter = 20 * time.Millisecond

// setKickAfter publishes the watchdog's bound for the VM's mode; call it
// whenever rec changes.
func (l *loop) setKickAfter() {
	d := LiveKickAfter
	if l.rec != nil {
		d = l.recordingKickAfter
	}
	l.kickAfter.Store(int64(d))
}

// run drives the vCPU until the guest stops or ctx ends.
func (l *loop) run(ctx context.Context) (StopReason, error) {
	// KVM ties a vCPU to its thread, and the kicker signals that thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	kicker, err := l.vcpu.NewKicker()
	if err != nil {
		return 0, fmt.Errorf("vCPU kicker: %w", err)
	}
	// The kick on cancellation must be over before run returns: the caller
	// may close the vCPU next, unmapping the run page the kick writes to.
	kickDone := make(chan struct{})
	stopKick := context.AfterFunc(ctx, func() {
		defer close(kickDone)
		_ = kicker.Kick()
	})
	defer func() {
		if !stopKick() {
			<-kickDone
		}
	}()
	defer l.startRequests(kicker)()
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	tid := unix.Gettid() // this goroutine's thread is locked: the vCPU thread
	l.startWatchdog = func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.watchdog(watchCtx, kicker, tid)
		}()
	}
	if l.rep == nil {
		// A backup's timers fire when the log says, never by wall time:
		// it has nothing for a watchdog to rescue until it goes live.
		l.startWatchdog()
	} else if l.logEnded != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.watchLogEnd(watchCtx, kicker)
		}()
	}
	defer func() {
		stopWatch()
		wg.Wait()
		l.stats.Kicks = l.kicks.Load()
		l.stats.SyncExits = l.syncExits
	}()
	l.ripFn = l.currentRIP
	if l.stats.PortExits == nil {
		l.stats.PortExits = map[uint16]uint64{}
	}
	l.haltTimer = time.NewTimer(time.Hour)
	l.haltTimer.Stop()
	l.nextDeadline.Store(-1)

	// resume: a backup's KVM_RUN was interrupted by a signal, not by the
	// guest, and goes back in where it stopped, deciding nothing.
	resume := false
	for {
		if l.requests.pending.Load() {
			// Before the stop checks: a request that stops the VM (a
			// snapshot taken as its last act) stops it here, not one
			// guest instruction stream later.
			l.serveRequests()
		}
		switch {
		case l.powerOff:
			return StoppedPowerOff, nil
		case l.reset:
			return StoppedReset, nil
		case ctx.Err() != nil:
			return StoppedCancelled, nil
		}
		if resume {
			// Straight back into the guest: nothing happened here.
			resume = false
		} else {
			if l.rec != nil {
				if err := l.rec.BeforeRun(l.syncExits, l.guest); err != nil {
					return 0, fmt.Errorf("record after exit #%d: %w", l.syncExits, err)
				}
			}
			if l.rep != nil && l.loadedAt {
				// A backup that starts from a loaded state (a snapshot, a
				// running primary's copy) did not replay the exit it
				// starts at, so what the primary logged there before its
				// first injection (its first BeforeRun's digest) is
				// applied here, as a replayed exit would have.
				l.loadedAt = false
				if err := l.replayInputs(); err != nil {
					if errors.Is(err, ErrLogEnd) {
						err = l.tryGoLive()
					}
					if err != nil {
						return l.replayStop(err)
					}
				}
			}
			if err := l.deliverInterrupt(); err != nil {
				if errors.Is(err, ErrLogEnd) {
					return l.replayStop(err)
				}
				return 0, err
			}
			if l.rep != nil {
				// The log may go on at this exit after the injection: the
				// primary was kicked here and shipped its state. Apply it and
				// go round again instead of running.
				more, err := l.rep.MoreAt(l.syncExits)
				if err != nil {
					return l.replayStop(err)
				}
				if more {
					err := l.replayInputs()
					if errors.Is(err, ErrLogEnd) {
						// The log ends inside this exit's entries: go live
						// here (or stop, if that is the answer).
						err = l.tryGoLive()
					}
					if err != nil {
						return l.replayStop(err)
					}
					continue
				}
			}
		}
		l.inRunSince.Store(int64(max(l.clock.Now(), 1)))
		exit, err := l.vcpu.Run()
		l.inRunSince.Store(0)
		if err != nil {
			return 0, fmt.Errorf("KVM_RUN: %w", err)
		}
		l.stats.Exits[min(int(exit.Kind), maxExitKinds-1)]++
		counted := synchronousExit(exit.Kind)
		if counted {
			l.syncExits++
			l.exits.Store(l.syncExits)
		}

		switch exit.Kind {
		case kvm.ExitIO:
			l.portIO(&exit.IO)
		case kvm.ExitMMIO:
			l.mmio(&exit.MMIO)
		case kvm.ExitHLT:
			if !l.vcpu.IFFlag() {
				return StoppedHalted, nil
			}
			if l.rep != nil {
				// Everything the primary did while halted at this exit is
				// in the log at this exit number; apply it, never wait.
				if err := l.afterExit(&exit); err != nil {
					return l.replayStop(err)
				}
				if l.rep == nil {
					// The log ended here and the VM went live: halt as a
					// live VM does.
					l.halt(ctx)
					continue
				}
				if !l.pic.Pending() && !l.powerOff && !l.reset {
					return l.replayStop(errors.New("the primary left HLT here; the backup has no interrupt to leave it with"))
				}
				continue
			}
			if l.rec != nil {
				l.rec.Exit(l.syncExits, exit.Kind, 0, l.ripFn)
			}
			l.halt(ctx)
		case kvm.ExitIRQWindowOpen:
			// The injection happens at the top of the loop.
		case kvm.ExitInterrupted:
			// A kick (Ctrl-C or the watchdog) or any other signal to this
			// thread. Clear immediate_exit before looking at why, so a
			// kick arriving meanwhile is not lost.
			l.vcpu.SetImmediateExit(false)
			if l.rep != nil && !l.pastLogEnd() {
				// The primary logged nothing here: a backup must neither
				// expire timers by wall time nor inject at a point where
				// the primary had no exit (kvm_run's readiness flags now
				// describe this point). Seen under load: a stray signal
				// made a backup inject a timer interrupt early.
				resume = true
				continue
			}
			if l.rep != nil {
				// The whole log is replayed and the guest runs on past its
				// end without an exit: go live here, or stop.
				if err := l.tryGoLive(); err != nil {
					return l.replayStop(err)
				}
			}
			if l.rec != nil && ctx.Err() == nil {
				if err := l.rec.Kicked(l.syncExits, l.guest); err != nil {
					return 0, fmt.Errorf("checkpoint after a kick at exit #%d: %w", l.syncExits, err)
				}
			}
		case kvm.ExitDebug:
		case kvm.ExitShutdown:
			return 0, errors.New("the guest triple-faulted (KVM_EXIT_SHUTDOWN)")
		case kvm.ExitSystemEvent:
			switch exit.SystemEvent.Type {
			case kvm.SystemEventShutdown:
				return StoppedPowerOff, nil
			case kvm.SystemEventReset:
				return StoppedReset, nil
			default:
				return 0, fmt.Errorf("guest system event %d", exit.SystemEvent.Type)
			}
		case kvm.ExitInternalError:
			return 0, fmt.Errorf("KVM internal error, suberror %d (1 = instruction emulation failed), data %#x",
				exit.Internal.Suberror, exit.Internal.Data)
		case kvm.ExitFailEntry:
			return 0, fmt.Errorf("KVM could not enter the guest: hardware entry failure reason %#x", exit.FailEntry.HardwareEntryFailureReason)
		default:
			return 0, fmt.Errorf("unhandled VM exit %v (hardware reason %#x)", exit.Kind, exit.HardwareExitReason)
		}
		if counted && exit.Kind != kvm.ExitHLT {
			if err := l.afterExit(&exit); err != nil {
				return l.replayStop(err)
			}
		} else if !counted && l.rep == nil {
			l.expireTimers() // a backup's timers fire only from the log
		}
		l.feedConsole()
		l.feedFrames()
	}
}

// afterExit ends synchronous exit n: it reports or checks the exit and
// applies the timer expiries due at it (from the clock on a primary, from
// the log on a backup).
func (l *loop) afterExit(exit *kvm.Exit) error {
	n := l.syncExits
	switch {
	case l.rec != nil:
		l.rec.Exit(n, exit.Kind, exitWhere(exit), l.ripFn)
	case l.rep != nil:
		if err := l.replayErr; err != nil {
			return err
		}
		err := l.rep.Exit(n, exit.Kind, exitWhere(exit), l.ripFn)
		if err == nil {
			err = l.replayErr
		}
		if err == nil {
			err = l.replayInputs()
		}
		if !errors.Is(err, ErrLogEnd) {
			return err
		}
		if err := l.tryGoLive(); err != nil {
			return err
		}
		// Live from here: this exit's timers by the clock.
	}
	l.expireTimers()
	return nil
}

// replayStop turns a replay error into the loop's result.
func (l *loop) replayStop(err error) (StopReason, error) {
	if errors.Is(err, ErrLogEnd) {
		// The log ends where the primary stopped: at the exit that
		// powered it off, the backup's devices asked for the same.
		switch {
		case l.powerOff:
			return StoppedPowerOff, nil
		case l.reset:
			return StoppedReset, nil
		}
		return StoppedLogEnd, nil
	}
	if l.liveErr != nil && errors.Is(err, l.liveErr) {
		// Going live was refused (the other side won the arbiter), or
		// failed: not a divergence.
		return 0, fmt.Errorf("at the end of the log, exit #%d: %w", l.syncExits, err)
	}
	return 0, &DivergenceError{Exit: l.syncExits, Err: err}
}

func (l *loop) feedFrames() {
	if l.frames != nil {
		l.frames.deliver()
	}
}

func (l *loop) portIO(io *kvm.IOExit) {
	// Existing keys update in place: no allocation after a port's first exit.
	l.stats.PortExits[io.Port]++
	size := int(io.Size)
	for i := 0; i < int(io.Count); i++ {
		data := io.Data[i*size : (i+1)*size]
		if io.In {
			l.bus.Read(io.Port, data)
		} else {
			l.bus.Write(io.Port, data)
		}
	}
}

// mmio hands an access to the device owning the address. Addresses with
// neither memory nor a device behave like an empty bus: reads return all
// ones, writes vanish.
func (l *loop) mmio(m *kvm.MMIOExit) {
	if dev := l.mmioBus.find(m.Addr); dev != nil {
		if m.IsWrite {
			dev.WriteMMIO(m.Addr, m.Data)
		} else {
			dev.ReadMMIO(m.Addr, m.Data)
		}
		return
	}
	if !m.IsWrite {
		for i := range m.Data {
			m.Data[i] = 0xff
		}
	}
	if l.onMMIO != nil {
		l.onMMIO(m.Addr, m.IsWrite)
	}
}

// deliverInterrupt injects the interrupt the PIC asserts if the vCPU can
// take it now, and otherwise asks KVM to exit as soon as it can.
func (l *loop) deliverInterrupt() error {
	if !l.pic.Pending() {
		l.vcpu.SetRequestInterruptWindow(false)
		return nil
	}
	if !l.vcpu.ReadyForInterruptInjection() {
		// Cleared when windows are off: a live VM that starts recording
		// may have asked for one before, and an interrupt-window exit is a
		// counted exit its backup would never see.
		l.vcpu.SetRequestInterruptWindow(!l.noWindows)
		if !l.noWindows {
			l.stats.Windows++
		}
		return nil
	}
	l.vcpu.SetRequestInterruptWindow(false)
	vector, ok := l.pic.Acknowledge()
	if !ok {
		return nil
	}
	if err := l.vcpu.Interrupt(vector); err != nil {
		return fmt.Errorf("inject interrupt vector %#x: %w", vector, err)
	}
	l.stats.Injected++
	switch {
	case l.rec != nil:
		l.rec.Injected(l.syncExits, vector)
	case l.rep != nil:
		err := l.rep.Injected(l.syncExits, vector)
		if errors.Is(err, ErrLogEnd) {
			// The log ends before the primary's injection record: go live
			// (the interrupt is in), or stop where the log ends.
			return l.tryGoLive()
		}
		if err != nil {
			return &DivergenceError{Exit: l.syncExits, Err: err}
		}
	}
	return nil
}

// halt waits, outside the guest, until the guest has something to do: an
// interrupt the PIC asserts (from an expired timer or console input), a
// power request, or the end of ctx.
func (l *loop) halt(ctx context.Context) {
	start := time.Now()
	defer func() { l.stats.HaltedTime += time.Since(start) }()
	for {
		l.expireTimers()
		l.feedConsole()
		l.feedFrames()
		if l.pic.Pending() || l.powerOff || l.reset || ctx.Err() != nil {
			return
		}
		var timeout <-chan time.Time
		if d := l.nextDeadline.Load(); d >= 0 {
			wait := time.Duration(d) - l.clock.Now()
			if wait <= 0 {
				continue
			}
			l.haltTimer.Reset(wait)
			timeout = l.haltTimer.C
		}
		var frames <-chan []byte
		if l.frames != nil {
			frames = l.frames.source
		}
		select {
		case <-ctx.Done():
		case <-l.requests.wake:
			// Served here, and the guest stays halted: leaving HLT without
			// an interrupt would be a point a backup cannot replay. A
			// request that must see the guest run on (AtRunningExit)
			// ends the halt instead, before it is served.
			if l.serveHaltedRequests() {
				return
			}
		case <-l.input.ready():
		case fr, ok := <-frames:
			if ok {
				l.frames.queue(fr)
			} else {
				l.frames.source = nil
			}
		case <-timeout:
		}
		l.haltTimer.Stop()
	}
}

// expireTimers runs the timed behaviour of every device whose deadline has
// passed, and publishes the next deadline to the watchdog.
func (l *loop) expireTimers() {
	if len(l.timers) == 0 {
		return
	}
	now := l.clock.Now()
	next := time.Duration(-1)
	for i, t := range l.timers {
		d, ok := t.NextDeadline()
		if ok && d <= now {
			t.Expire(now)
			if l.rec != nil {
				l.rec.TimerFired(l.syncExits, i, now)
			}
			d, ok = t.NextDeadline()
		}
		if ok && (next < 0 || d < next) {
			next = d
		}
	}
	l.nextDeadline.Store(int64(next))
}

func (l *loop) feedConsole() {
	if l.input == nil || l.console == nil {
		return
	}
	if took := l.input.drainInto(l.console); len(took) > 0 && l.rec != nil {
		l.rec.ConsoleInput(l.syncExits, took)
	}
}

// watchdog kicks a guest that runs without exiting while a timer is
// overdue (DESIGN.md rule 5). Such a kick is not a point the backup can
// reproduce; it is counted so replication can resynchronise after it.
//
// It counts the CPU time the vCPU thread spent in the current KVM_RUN since
// the timer became overdue, not wall time: a thread that the host did not
// schedule (a busy machine, two VMs on one CPU) has not been spinning, and
// kicking it would cost a resync for nothing.
func (l *loop) watchdog(ctx context.Context, kicker *kvm.Kicker, tid int) {
	tick := time.NewTicker(LiveKickAfter)
	defer tick.Stop()
	stat := fmt.Sprintf("/proc/self/task/%d/schedstat", tid)
	var watchedRun, cpuAtWatch int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		since, deadline, bound := l.inRunSince.Load(), l.nextDeadline.Load(), l.kickAfter.Load()
		now := int64(l.clock.Now())
		if since == 0 || deadline < 0 || now-deadline <= bound || now-since <= bound {
			watchedRun = 0
			continue
		}
		cpu, err := threadCPUTime(stat)
		if err != nil {
			// No per-thread accounting: fall back to wall time.
			l.kicks.Add(1)
			_ = kicker.Kick()
			continue
		}
		if since != watchedRun {
			watchedRun, cpuAtWatch = since, cpu
			continue
		}
		if cpu-cpuAtWatch > bound {
			watchedRun = 0
			l.kicks.Add(1)
			_ = kicker.Kick()
		}
	}
}

// threadCPUTime reads a thread's time on a CPU, guest time included, in ns
// (the first field of /proc/<pid>/task/<tid>/schedstat).
func threadCPUTime(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("%s: empty", path)
	}
	return strconv.ParseInt(f[0], 10, 64)
}

// inputQueue carries console input from the reading goroutine to the exit
// loop, which hands it to the UART at an exit.
type inputQueue struct {
	mu     sync.Mutex
	buf    []byte
	signal chan struct{}
}

func newInputQueue() *inputQueue { return &inputQueue{signal: make(chan struct{}, 1)} }

func (q *inputQueue) push(b []byte) {
	q.mu.Lock()
	q.buf = append(q.buf, b...)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *inputQueue) ready() <-chan struct{} {
	if q == nil {
		return nil
	}
	return q.signal
}

// drainInto offers the queued bytes to r and returns a copy of those it
// took (nil if none).
func (q *inputQueue) drainInto(r consoleReceiver) []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.buf) == 0 {
		return nil
	}
	n := r.Receive(q.buf)
	if n == 0 {
		return nil
	}
	took := append([]byte(nil), q.buf[:n]...)
	q.buf = q.buf[:copy(q.buf, q.buf[n:])]
	return took
}
