package vm

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// Exit numbers: the loop counts the synchronous exits, those the guest
// itself caused (port and MMIO I/O, HLT, interrupt-window-open, debug). An
// exit caused by a kick or a signal is not counted. Every non-deterministic
// input is tied to the number of the synchronous exit at which the guest
// observed it, so a backup that replays the inputs at the same numbers
// executes the same instructions (DESIGN.md, "The determinism contract").
// exitWhere is the port or address an exit concerns, for divergence checks.
func exitWhere(e *kvm.Exit) uint64 {
	switch e.Kind {
	case kvm.ExitIO:
		return uint64(e.IO.Port)
	case kvm.ExitMMIO:
		return e.MMIO.Addr
	}
	return 0
}

func synchronousExit(k kvm.ExitKind) bool {
	switch k {
	case kvm.ExitIO, kvm.ExitMMIO, kvm.ExitHLT, kvm.ExitIRQWindowOpen, kvm.ExitDebug:
		return true
	}
	return false
}

// Recorder is told, on the primary, every non-deterministic input at the
// exit where it happened. Package replay implements it (encoding events for
// the log channel); hypervisor does not import replay.
type Recorder interface {
	// Exit is called after synchronous exit n was handled, before any
	// timer expiry or injection at n. where is the port of a port I/O exit
	// or the address of an MMIO exit (0 otherwise): with the kind, enough
	// to see the backup take another path at the first exit where it does.
	// rip reads the guest's RIP (a KVM_GET_REGS): call it only for exits
	// that are logged with it. At an I/O exit RIP still points at the I/O
	// instruction, the same on both sides.
	Exit(n uint64, kind kvm.ExitKind, where uint64, rip func() uint64)
	// ClockRead is a device's read of the guest clock during exit n.
	ClockRead(n uint64, value time.Duration)
	// TimerFired: timer (an index in the machine's timer list) expired
	// at exit n with the given now.
	TimerFired(n uint64, timer int, now time.Duration)
	// Injected: the vCPU got interrupt vector after exit n.
	Injected(n uint64, vector uint8)
	// Kicked: the watchdog stopped the guest after exit n at a point no
	// backup can reproduce; replication must resynchronise.
	Kicked(n uint64)
}

// Replayer serves a recording back on a backup. Its methods return an error
// when the log disagrees with what the backup does: divergence.
type Replayer interface {
	// Exit checks synchronous exit n against the log. A replayer whose log
	// ends before n returns ErrLogEnd.
	Exit(n uint64, kind kvm.ExitKind, where uint64, rip func() uint64) error
	// ClockRead returns the value the primary's device read during exit n.
	ClockRead(n uint64) (time.Duration, error)
	// NextTimer returns the next timer expiry logged at exit n, if any.
	NextTimer(n uint64) (timer int, now time.Duration, ok bool, err error)
	// Injected checks an injection after exit n against the log.
	Injected(n uint64, vector uint8) error
}

// ErrLogEnd is returned by a Replayer whose log ends: the backup has
// replayed everything the primary sent.
var ErrLogEnd = errors.New("end of the replay log")

// DivergenceError stops a backup that does not do what the primary did.
type DivergenceError struct {
	Exit uint64
	Err  error
}

func (e *DivergenceError) Error() string {
	return fmt.Sprintf("backup diverged from the primary at exit #%d: %v", e.Exit, e.Err)
}

func (e *DivergenceError) Unwrap() error { return e.Err }

// recordingClock is the devices' clock on a primary: live time, each read
// reported with its exit number.
type recordingClock struct {
	live devices.Clock
	l    *loop
}

func (c *recordingClock) Now() time.Duration {
	v := c.live.Now()
	c.l.rec.ClockRead(c.l.syncExits, v)
	return v
}

// replayClock is the devices' clock on a backup: the primary's values.
// Now cannot fail, so a disagreement is parked for the loop to report
// right after the exit.
type replayClock struct {
	l *loop
}

func (c *replayClock) Now() time.Duration {
	v, err := c.l.rep.ClockRead(c.l.syncExits)
	if err != nil && c.l.replayErr == nil {
		c.l.replayErr = err
	}
	return v
}

// replayTimers fires the timers the log says expired at exit n.
func (l *loop) replayTimers() error {
	for {
		i, now, ok, err := l.rep.NextTimer(l.syncExits)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		if i < 0 || i >= len(l.timers) {
			return fmt.Errorf("log names timer %d, this machine has %d", i, len(l.timers))
		}
		l.timers[i].Expire(now)
	}
}

// currentRIP reads the vCPU's RIP for Recorder.Exit and Replayer.Exit.
func (l *loop) currentRIP() uint64 {
	if err := l.vcpu.GetRegs(&l.regs); err != nil {
		return ^uint64(0) // never equal to a real RIP on the other side
	}
	return l.regs.RIP
}
