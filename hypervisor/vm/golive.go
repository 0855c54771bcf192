package vm

import (
	"context"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// A backup goes live where its log ends, if its primary was lost: the
// first input the log cannot provide (a clock read, a disk read, the check
// of an exit or an output) is where the VM stops replaying and takes its
// inputs from the world, as a plain VM does. Every input before that point
// came from the log, so the guest's state is one the primary passed
// through, and everything the outside world saw from the primary was
// produced by exits the backup replayed (the output rule): the guest goes
// on from there and nobody outside can tell.

// LiveInputs is what a backup going live attaches to.
type LiveInputs struct {
	// Received carries frames for the guest's NIC from now on (nil: none).
	Received <-chan []byte
}

// GoLiveFunc decides, on the vCPU goroutine, whether a backup whose log has
// ended goes live, and prepares the world for it: the caller arbitrates
// (exactly one side of a pair may act alone), opens the disks, attaches the
// NIC. It returns ErrLogEnd to stop as a backup always did (the primary
// closed the log cleanly, or there is no arbiter), another error to stop
// with it (the primary won the arbitration), or the live inputs.
type GoLiveFunc func() (LiveInputs, error)

// offsetClock continues the primary's guest time on this host: the last
// value the backup replayed plus the host's monotonic time since.
type offsetClock struct {
	base   devices.Clock
	offset time.Duration
}

func (c *offsetClock) Now() time.Duration { return c.base.Now() + c.offset }

// tryGoLive is called where the log ended. It returns nil once the VM is
// live (at once if it already is), or why it stays a backup; the answer is
// the same every time it is asked again.
func (l *loop) tryGoLive() error {
	if l.rep == nil {
		return nil
	}
	if l.liveErr != nil {
		return l.liveErr
	}
	if l.goLive == nil {
		l.liveErr = ErrLogEnd
		return l.liveErr
	}
	in, err := l.goLive()
	if err != nil {
		l.liveErr = err
		return err
	}
	// The guest clock goes on from the last value replayed and never goes
	// back: the timers' deadlines are in that timeline.
	l.clock = &offsetClock{base: l.clock, offset: l.lastReplayedClock - l.clock.Now()}
	l.rep = nil
	l.live.Store(true)
	l.noWindows = false
	if l.frames != nil && in.Received != nil {
		l.frames.source = in.Received
	}
	l.stats.WentLiveAt = l.syncExits
	l.stats.WentLive = true
	if l.startWatchdog != nil {
		l.startWatchdog()
	}
	return nil
}

// pastLogEnd reports, at an interrupted KVM_RUN of a backup, whether the
// log has ended and all of it was replayed: nothing more can come for the
// guest to reach by itself.
func (l *loop) pastLogEnd() bool {
	if l.logEnded == nil {
		return false
	}
	select {
	case <-l.logEnded:
		return l.rep.Drained()
	default:
		return false
	}
}

// logEndKick is how often a backup whose log ended interrupts a guest that
// keeps running without exits, until it is live or stopped.
const logEndKick = 50 * time.Millisecond

// watchLogEnd kicks the vCPU every logEndKick once the log has ended, so a
// guest spinning past the log's last exit does not keep the backup from
// going live (the loop looks at each kick and resumes if the log is not
// drained yet).
func (l *loop) watchLogEnd(ctx context.Context, kicker *kvm.Kicker) {
	select {
	case <-ctx.Done():
		return
	case <-l.logEnded:
	}
	tick := time.NewTicker(logEndKick)
	defer tick.Stop()
	for !l.live.Load() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if l.inRunSince.Load() != 0 {
			_ = kicker.Kick()
		}
	}
}
