package vm

import (
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
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
