package vm

import (
	"errors"
	"time"
)

// A VM that runs live (alone, or a backup gone live after its primary was
// lost) can become the primary of a new pair while it runs: a new backup
// receives a copy of its memory made while the guest goes on (pre-copy,
// with the dirty-page log saying what to send again), then at one exit the
// last dirty pages and the machine state, and from that exit on the VM
// records its inputs for that backup. StartRecording is that exit's switch.

// replicable reports whether the VM tracks what it needs to record or
// replay: the dirty-page logs (guest and device writes) and the registers
// synced into kvm_run at every exit.
func (v *VM) replicable() bool {
	return v.cfg.Record != nil || v.cfg.Replay != nil || v.cfg.Replicable
}

// StartRecording makes a live VM record its non-deterministic inputs into
// rec from this exit on, as a VM built with Config.Record does: the backup
// it records for must hold this exact state (memory, SaveState) and replay
// from ExitNumber. Call it on the vCPU goroutine between exits (inside
// AtExit), in the same request that captured that state, so no guest
// instruction runs in between. The VM must be replicable (Config.Record,
// Replay or Replicable) and neither recording nor replaying now.
func (v *VM) StartRecording(rec Recorder) error {
	l := v.loop
	switch {
	case rec == nil:
		return errors.New("start recording: no recorder")
	case !v.replicable():
		return errors.New("start recording: the VM was built without dirty-page logging (Config.Replicable)")
	case l.rep != nil:
		return errors.New("start recording: the VM still replays a log (a backup records only once live)")
	case l.rec != nil:
		return errors.New("start recording: the VM records already")
	}
	l.rec = rec
	l.setKickAfter()
	startRecorderAt(rec, l.syncExits)
	// As from power-on on a primary: interrupts only at exits the guest's
	// own instructions caused, where the backup finds them by counting. A
	// window asked for while live is withdrawn: its exit would be a
	// counted exit the backup never sees.
	l.noWindows = true
	l.vcpu.SetRequestInterruptWindow(false)
	return nil
}

// StopRecording makes a recording VM run on live, recording nothing: its
// backup is gone for good (the primary won the arbiter's record and runs
// alone). Call it on the vCPU goroutine between exits (inside AtExit).
func (v *VM) StopRecording() {
	v.loop.rec = nil
	v.loop.setKickAfter()
	v.loop.noWindows = false
}

// Recording reports whether the VM records for a backup now. Read it only
// on the vCPU goroutine or while Run is not running.
func (v *VM) Recording() bool { return v.loop.rec != nil }

// WallTime is what the guest's RTC read at power-on (Config.WallTime, or
// the time New was called): a backup made from this VM while it runs must
// be built with the same value.
func (v *VM) WallTime() time.Time { return v.cfg.WallTime }

// recorderStart is what a Recorder that can start mid-run implements
// (replay.Recorder): the exit it starts at.
type recorderStart interface {
	StartAt(n uint64)
}

// startRecorderAt tells rec the exit recording starts at, if it wants to
// know: inputs applied after that exit (a frame taken before the next one)
// belong to it.
func startRecorderAt(rec Recorder, n uint64) {
	if s, ok := rec.(recorderStart); ok {
		s.StartAt(n)
	}
}
