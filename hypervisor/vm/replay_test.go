package vm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// memLog is a recording kept in memory: the test stand-in for package
// replay's encoder and the log channel.
type memLog struct {
	exits   []exitEntry // every synchronous exit, n = index+1
	clocks  []clockEntry
	timers  []timerEntry
	injects []injectEntry
	kicks   int
}

type exitEntry struct {
	kind  kvm.ExitKind
	where uint64
}
type clockEntry struct {
	n uint64
	v time.Duration
}
type timerEntry struct {
	n     uint64
	timer int
	now   time.Duration
}
type injectEntry struct {
	n      uint64
	vector uint8
}

func (m *memLog) Exit(n uint64, kind kvm.ExitKind, where uint64, _ func() uint64) {
	if n != uint64(len(m.exits))+1 {
		panic(fmt.Sprintf("exit %d reported after %d", n, len(m.exits)))
	}
	m.exits = append(m.exits, exitEntry{kind, where})
}
func (m *memLog) ClockRead(n uint64, v time.Duration) { m.clocks = append(m.clocks, clockEntry{n, v}) }
func (m *memLog) TimerFired(n uint64, i int, now time.Duration) {
	m.timers = append(m.timers, timerEntry{n, i, now})
}
func (m *memLog) Injected(n uint64, v uint8) { m.injects = append(m.injects, injectEntry{n, v}) }
func (m *memLog) Kicked(n uint64, _ vm.GuestState) error {
	m.kicks++
	return nil
}
func (m *memLog) BeforeRun(uint64, vm.GuestState) error { return nil }

// The tiny guests have no console input, NIC or disk.
func (m *memLog) ConsoleInput(uint64, []byte)                      { panic("console input") }
func (m *memLog) FrameReceived(uint64, int, []byte)                { panic("frame") }
func (m *memLog) DiskRead(uint64, int, int64, []byte)              { panic("disk read") }
func (m *memLog) DiskReadFailed(uint64, int)                       { panic("disk read") }
func (r *memReplayer) DiskRead(uint64, int, int64, []byte) error   { return errors.New("no disk") }
func (m *memLog) Output(uint64, vm.OutputKind, int, int64, []byte) { panic("output") }
func (r *memReplayer) Output(uint64, vm.OutputKind, int, int64, []byte) error {
	return errors.New("no devices with outputs")
}

// memReplayer serves a memLog in order and reports the first disagreement.
type memReplayer struct {
	log            *memLog
	ci, ti, ii     int
	lastClockCheck uint64
}

func (r *memReplayer) Exit(n uint64, kind kvm.ExitKind, where uint64, _ func() uint64) error {
	if n > uint64(len(r.log.exits)) {
		return vm.ErrLogEnd
	}
	if e := r.log.exits[n-1]; e.kind != kind || e.where != where {
		return fmt.Errorf("exit is %v at %#x, the primary's was %v at %#x", kind, where, e.kind, e.where)
	}
	// Every clock read the primary made at this exit must have been used.
	if r.ci < len(r.log.clocks) && r.log.clocks[r.ci].n == n {
		return fmt.Errorf("the primary read the clock %d more time(s) at this exit", countAt(r.log.clocks[r.ci:], n))
	}
	return nil
}

func countAt(c []clockEntry, n uint64) int {
	k := 0
	for k < len(c) && c[k].n == n {
		k++
	}
	return k
}

func (r *memReplayer) ClockRead(n uint64) (time.Duration, error) {
	if r.ci >= len(r.log.clocks) || r.log.clocks[r.ci].n != n {
		return 0, fmt.Errorf("a device read the clock, the primary did not at this exit")
	}
	v := r.log.clocks[r.ci].v
	r.ci++
	return v, nil
}

func (r *memReplayer) Next(n uint64, _ vm.GuestState) (vm.Input, bool, error) {
	if r.ti >= len(r.log.timers) || r.log.timers[r.ti].n > n {
		return vm.Input{}, false, nil
	}
	t := r.log.timers[r.ti]
	if t.n < n {
		return vm.Input{}, false, fmt.Errorf("timer %d was due at exit #%d and did not fire", t.timer, t.n)
	}
	r.ti++
	return vm.Input{Kind: vm.InputTimer, Timer: t.timer, Now: t.now}, true, nil
}

func (r *memReplayer) MoreAt(n uint64) (bool, error) {
	if r.ii < len(r.log.injects) && r.log.injects[r.ii].n == n {
		return false, fmt.Errorf("the primary injected vector %#x after exit #%d, the backup nothing", r.log.injects[r.ii].vector, n)
	}
	return false, nil
}

// Drained: the in-memory log never grows, and tests give no LogEnded.
func (r *memReplayer) Drained() bool { return false }

func (r *memReplayer) Injected(n uint64, vector uint8) error {
	if r.ii >= len(r.log.injects) {
		return fmt.Errorf("injected vector %#x, the primary injected nothing more", vector)
	}
	e := r.log.injects[r.ii]
	r.ii++
	if e.n != n || e.vector != vector {
		return fmt.Errorf("injected vector %#x, the primary injected %#x after exit #%d", vector, e.vector, e.n)
	}
	return nil
}

var wallTime = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func runGuest(t *testing.T, name string, cfg vm.Config) (string, vm.Stats, vm.StopReason, error) {
	t.Helper()
	code, err := os.ReadFile("testdata/guests/" + name + ".bin")
	if err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	cfg.RawCode, cfg.MemoryMiB, cfg.Console, cfg.WallTime = code, 16, &console, wallTime
	v, err := vm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reason, err := v.Run(ctx)
	return console.String(), v.Stats(), reason, err
}

// record runs a guest as a primary. A recording with a watchdog kick cannot
// be replayed by design (a resync would follow), so a loaded host that
// forces one gets another try.
func record(t *testing.T, name string) (*memLog, string, vm.Stats) {
	t.Helper()
	for try := 0; try < 3; try++ {
		log := &memLog{}
		out, st, reason, err := runGuest(t, name, vm.Config{Record: log})
		if err != nil || reason != vm.StoppedPowerOff {
			t.Fatalf("primary: %v %v", reason, err)
		}
		if log.kicks == 0 {
			return log, out, st
		}
		t.Logf("recording had %d watchdog kicks (host under load); recording again", log.kicks)
	}
	t.Fatal("no recording without watchdog kicks in 3 tries")
	return nil, "", vm.Stats{}
}

// TestReplayExecutesWhatThePrimaryExecuted records tiny guests that depend
// on timer interrupts and clock reads, replays each in a second VM, and
// checks the backup did exactly what the primary did: the same exits, the
// same injections at the same exits, the same console output.
func TestReplayExecutesWhatThePrimaryExecuted(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	// Not "window": replication injects only at instruction-caused exits,
	// so that guest (spinning with interrupts on) always needs a kick and
	// a checkpoint, which this in-memory log does not carry; package
	// replay runs it with checkpoints.
	for _, name := range []string{"pit", "hltwake"} {
		t.Run(name, func(t *testing.T) {
			log, pout, pst := record(t, name)
			bout, bst, reason, err := runGuest(t, name, vm.Config{Replay: &memReplayer{log: log}})
			if err != nil {
				t.Fatalf("backup: %v", err)
			}
			t.Logf("primary: %d synchronous exits, %d clock reads, %d timer expiries, %d injections, halted %v; backup: %d exits, halted %v, stopped: %v",
				pst.SyncExits, len(log.clocks), len(log.timers), len(log.injects), pst.HaltedTime.Round(time.Millisecond),
				bst.SyncExits, bst.HaltedTime, reason)
			if reason != vm.StoppedPowerOff || bst.SyncExits != pst.SyncExits || bst.Injected != pst.Injected {
				t.Fatalf("backup stopped with %v after %d exits and %d injections; primary powered off after %d and %d",
					reason, bst.SyncExits, bst.Injected, pst.SyncExits, pst.Injected)
			}
			if bout != pout {
				t.Fatalf("backup printed %q, primary %q", bout, pout)
			}
		})
	}
}
