package vm

import (
	"testing"
	"time"
)

// TestKickAfterFollowsTheMode: the watchdog's bound is the live one while
// the VM records nothing, the recording one while it records, and back.
func TestKickAfterFollowsTheMode(t *testing.T) {
	l := &loop{recordingKickAfter: 50 * time.Millisecond}
	check := func(when string, want time.Duration) {
		t.Helper()
		if got := time.Duration(l.kickAfter.Load()); got != want {
			t.Fatalf("%s: kick after %v, want %v", when, got, want)
		}
	}
	l.setKickAfter()
	check("live", LiveKickAfter)
	l.rec = nopRecorder{}
	l.setKickAfter()
	check("recording", 50*time.Millisecond)
	l.rec = nil
	l.setKickAfter()
	check("live again", LiveKickAfter)
}

// nopRecorder records nothing.
type nopRecorder struct{ Recorder }
