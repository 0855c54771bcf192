package vm

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/ftvm/ftvm/testbench/kvmhost"
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

// TestWatchdogKicksForAWaitingInterrupt: with interrupt windows off, as on
// a recording VM, an interrupt that became pending while the guest had
// interrupts masked waits for the guest's next exit. The masked guest
// then spins without exits and with no timer overdue (its one-shot has
// fired): only the watchdog's kick for a waiting interrupt delivers it.
// Without that kick the guest spins until the test's deadline.
func TestWatchdogKicksForAWaitingInterrupt(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	code, err := os.ReadFile("testdata/guests/masked.bin")
	if err != nil {
		t.Fatal(err)
	}
	console := &bytes.Buffer{}
	v, err := New(Config{RawCode: code, MemoryMiB: 16, Console: console})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.loop.noWindows = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reason, err := v.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := v.Stats()
	t.Logf("console %q, %v, %d injected, %d windows, %d kicks", console.String(), st.ByKind(), st.Injected, st.Windows, st.Kicks)
	if reason != StoppedPowerOff || console.String() != "MW\n" {
		t.Fatalf("stopped with %v, console %q: want the tick taken in the exit-less loop (MW)", reason, console.String())
	}
	if st.Windows != 0 || st.KicksFor[KickInterrupt] == 0 {
		t.Fatalf("%d windows, kicks %v: want the tick delivered by a kick for the waiting interrupt, with no window", st.Windows, st.KicksFor)
	}
}

// TestWatchdogSeesWaitingFrames: frames that sit in the device's channel
// count as waiting from the watchdog's first sight of them, and only once
// they waited longer than the bound.
func TestWatchdogSeesWaitingFrames(t *testing.T) {
	l := &loop{}
	l.nextDeadline.Store(-1)
	if l.framesWaiting() {
		t.Fatal("frames waiting on a VM without a network device")
	}
	ch := make(chan []byte, 2)
	var src <-chan []byte = ch
	l.frameSource.Store(&src)
	if l.framesWaiting() {
		t.Fatal("frames waiting on an empty channel")
	}
	ch <- []byte{1}
	if !l.framesWaiting() {
		t.Fatal("a frame in the channel is not seen waiting")
	}
	const bound = int64(20 * time.Millisecond)
	seen := int64(100 * time.Millisecond)
	if r := l.waitedFor(seen+bound, bound, seen); r != kickNone {
		t.Fatalf("a frame seen one bound ago counts as waited for (%v)", r)
	}
	if r := l.waitedFor(seen+bound+1, bound, seen); r != KickFrame {
		t.Fatalf("a frame seen more than a bound ago: reason %v, want KickFrame", r)
	}
	if r := l.waitedFor(seen+10*bound, bound, 0); r != kickNone {
		t.Fatalf("waited for (%v) with no frame seen, no interrupt waiting and no timer", r)
	}
	l.nextDeadline.Store(seen)
	if r := l.waitedFor(seen+bound+1, bound, seen); r != KickTimer {
		t.Fatalf("an overdue timer and a waiting frame: reason %v, want KickTimer (looked at first)", r)
	}
}
