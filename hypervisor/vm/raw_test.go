package vm_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// newRawVM creates a VM running the tiny guest testdata/guests/NAME.bin,
// with its console collected in the returned buffer.
func newRawVM(t *testing.T, name string) (*vm.VM, *bytes.Buffer) {
	t.Helper()
	code, err := os.ReadFile("testdata/guests/" + name + ".bin")
	if err != nil {
		t.Fatal(err)
	}
	console := &bytes.Buffer{}
	v, err := vm.New(vm.Config{RawCode: code, MemoryMiB: 16, Console: console})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v, console
}

// runRaw runs a tiny guest to power-off and returns its console output,
// the loop's statistics and the wall time it took.
func runRaw(t *testing.T, name string) (string, vm.Stats, time.Duration) {
	t.Helper()
	v, console := newRawVM(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	reason, err := v.Run(ctx)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if reason != vm.StoppedPowerOff {
		t.Fatalf("%s stopped with %v, want power-off; console %q", name, reason, console.String())
	}
	st := v.Stats()
	t.Logf("%s ran in %v: %d exits %v, %d injected, %d windows, %d kicks, halted %v",
		name, time.Since(start).Round(time.Microsecond), st.Total(), st.ByKind(), st.Injected, st.Windows, st.Kicks, st.HaltedTime.Round(time.Microsecond))
	return console.String(), st, time.Since(start)
}

func TestRawSerialOutput(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	out, _, _ := runRaw(t, "serial")
	if out != "hello from ring 0\n" {
		t.Fatalf("console = %q", out)
	}
}

func TestRawPITInterruptsCounted(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	out, st, elapsed := runRaw(t, "pit")
	// The guest stops waiting at 100 ticks; one more may land between its
	// last compare and CLI. Every injected interrupt must be counted once.
	dots := strings.TrimSuffix(out, "\n")
	if strings.Trim(dots, ".") != "" || len(dots) < 100 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("console = %q, want at least 100 dots (one per PIT interrupt the guest took) and a newline", out)
	}
	if st.Injected != uint64(len(dots)) {
		t.Fatalf("injected %d interrupts, the guest counted %d", st.Injected, len(dots))
	}
	// Where exits are slow (a nested host: ~200 µs each) the next tick is
	// often pending before the handler returns and arrives through an
	// interrupt window rather than a HLT wake-up; both paths are right.
	if st.Exits[kvm.ExitHLT] == 0 || st.HaltedTime == 0 {
		t.Fatalf("%d HLT exits, halted %v: the guest never waited for a tick", st.Exits[kvm.ExitHLT], st.HaltedTime)
	}
	// A 1 kHz timer cannot deliver 100 ticks in less than 99 ms.
	if elapsed < 99*time.Millisecond {
		t.Fatalf("100 ticks of a 1 kHz PIT arrived within %v", elapsed)
	}
}

func TestRawInterruptWindow(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	out, st, _ := runRaw(t, "window")
	if out != "MW\n" {
		t.Fatalf("console = %q, want \"MW\\n\" (no tick while masked, then a tick after STI)", out)
	}
	if st.Windows == 0 || st.Exits[kvm.ExitIRQWindowOpen] == 0 {
		t.Fatalf("the tick was not delivered through an interrupt window: %d requested, %d window exits",
			st.Windows, st.Exits[kvm.ExitIRQWindowOpen])
	}
	// The watchdog may also kick (a loaded host can deschedule the vCPU
	// thread for longer than its bound); the window exits above are what
	// show the masked tick was delivered through the interrupt window.
	if st.Kicks != 0 {
		t.Logf("%d watchdog kicks besides the window exits (host under load)", st.Kicks)
	}
}

func TestRawHLTWokenByTimer(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	out, st, _ := runRaw(t, "hltwake")
	ticks, err := strconv.ParseUint(strings.TrimSpace(out), 16, 32)
	if err != nil {
		t.Fatalf("console = %q: %v", out, err)
	}
	elapsed := time.Duration(ticks) * time.Second / 3579545
	t.Logf("guest measured %v halted (one-shot of 65535 PIT ticks = 54.9 ms)", elapsed)
	if elapsed < 54*time.Millisecond {
		t.Fatalf("guest woke after %v of PM timer time, before the 54.9 ms one-shot", elapsed)
	}
	if st.HaltedTime < 40*time.Millisecond || st.Injected != 1 {
		t.Fatalf("halted %v with %d injections: want a real wait ended by one timer interrupt", st.HaltedTime, st.Injected)
	}
}

func TestRawCancelStopsSpinningGuest(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	v, console := newRawVM(t, "spin")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	reason, err := v.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped after %v: %v", time.Since(start).Round(time.Millisecond), v.Stats().ByKind())
	if reason != vm.StoppedCancelled || console.String() != "S" {
		t.Fatalf("reason %v, console %q: want a cancelled stop after the guest printed S", reason, console.String())
	}
	if v.Stats().Exits[kvm.ExitInterrupted] == 0 {
		t.Fatal("the spinning guest stopped without being kicked out of KVM_RUN")
	}
}

func TestRawTripleFaultReportsRegisters(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	v, _ := newRawVM(t, "triplefault")
	_, err := v.Run(context.Background())
	var ge *vm.GuestError
	if !errors.As(err, &ge) {
		t.Fatalf("err = %v, want a *vm.GuestError", err)
	}
	t.Logf("reported as:\n%v", err)
	msg := err.Error()
	for _, want := range []string{"triple-faulted", "rip ", "rflags", "last console lines", "T"} {
		if !strings.Contains(msg, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestRawCancelThenCloseRepeatedly cancels and closes VMs back to back: the
// kick that cancellation sends must be finished before Close unmaps the run
// page it writes to (this crashed the process once).
func TestRawCancelThenCloseRepeatedly(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	for i := 0; i < 30; i++ {
		v, _ := newRawVM(t, "spin")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := v.Run(ctx)
			done <- err
		}()
		time.Sleep(time.Duration(i%5) * time.Millisecond)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A request served inside a halt leaves the guest halted (AtExit); one
// that must see the guest run on (AtRunningExit) ends the halt first, as
// a spurious wake-up: hltwake's idle loop halts again, so the run shows
// one more HLT exit, and the guest still wakes only on its timer.
//
// The request must reach the loop inside the 55 ms halt. On a loaded host
// a fixed sleep can land before the guest halts or after its timer fired
// (CI failed that way once), so each trial notes where its request was
// served, from the vCPU goroutine that serves it, and a trial that missed
// the halt is run again.
func TestRawAtRunningExitLeavesHalt(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	// trial runs hltwake, asks inside its halt, and returns the HLT exits
	// of the run, or ok=false when the request missed the halt.
	trial := func(running bool, delay time.Duration) (hlts uint64, ok bool) {
		v, console := newRawVM(t, "hltwake")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := v.Run(ctx)
			done <- err
		}()
		time.Sleep(delay)
		ask := v.AtExit
		if running {
			ask = v.AtRunningExit
		}
		var at vm.Stats // the loop's statistics where the request was served
		served := false
		if err := ask(ctx, func() error { served, at = true, v.Stats(); return nil }); err != nil || !served {
			t.Fatalf("request: %v (served %v)", err, served)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		ticks, err := strconv.ParseUint(strings.TrimSpace(console.String()), 16, 32)
		if err != nil || time.Duration(ticks)*time.Second/3579545 < 54*time.Millisecond {
			t.Fatalf("console %q: the guest woke before its timer", console.String())
		}
		if at.Exits[kvm.ExitHLT] == 0 || at.Injected != 0 {
			t.Logf("request served outside the halt (%d HLT exits, %d interrupts injected before it): again",
				at.Exits[kvm.ExitHLT], at.Injected)
			return 0, false
		}
		return v.Stats().Exits[kvm.ExitHLT], true
	}
	for _, c := range []struct {
		running bool
		want    uint64
		why     string
	}{
		{false, 1, "AtExit inside the halt: the guest stays halted"},
		{true, 2, "AtRunningExit inside the halt: the halt ends, the idle loop halts again"},
	} {
		var n uint64
		ok := false
		// The guest halts within a few ms of Run; later trials wait longer
		// in case the host is slow to start it.
		for attempt := 0; attempt < 6 && !ok; attempt++ {
			n, ok = trial(c.running, time.Duration(5+5*attempt)*time.Millisecond)
		}
		if !ok {
			t.Fatalf("%s: no request reached the 55 ms halt in 6 trials", c.why)
		}
		if n != c.want {
			t.Fatalf("%s: %d HLT exits, want %d", c.why, n, c.want)
		}
	}
}
