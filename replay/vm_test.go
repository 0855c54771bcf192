package replay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// The tiny real-mode guests of hypervisor/vm, shipped into the nested host.
func guestsDir() string {
	d, _ := filepath.Abs("../hypervisor/vm/testdata/guests")
	return d
}

func TestMain(m *testing.M) {
	os.Exit(kvmhost.TestMain(m, kvmhost.WithFiles(guestsDir())))
}

var wallTime = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func runGuest(t *testing.T, name string, cfg vm.Config) (string, vm.Stats, vm.StopReason, error) {
	return runGuestThen(t, name, cfg, nil)
}

// runGuestThen runs a guest and calls stopped (if set) after it stopped and
// before the VM is closed.
func runGuestThen(t *testing.T, name string, cfg vm.Config, stopped func()) (string, vm.Stats, vm.StopReason, error) {
	t.Helper()
	code, err := os.ReadFile(filepath.Join(guestsDir(), name+".bin"))
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
	if stopped != nil {
		stopped()
	}
	return console.String(), v.Stats(), reason, err
}

// record runs a guest as a primary into encoded batches. A watchdog kick
// (a loaded host) is in the log with its checkpoint, which the backup loads.
func record(t *testing.T, name string, opts replay.RecorderOptions) ([][]byte, string, vm.Stats) {
	t.Helper()
	var batches [][]byte
	rec := replay.NewRecorder(func(b []byte) error {
		batches = append(batches, b)
		return nil
	}, opts)
	var closeErr error
	out, st, reason, err := runGuestThen(t, name, vm.Config{Record: rec}, func() { closeErr = rec.Close() })
	if err != nil || reason != vm.StoppedPowerOff {
		t.Fatalf("primary: %v %v", reason, err)
	}
	if closeErr != nil {
		t.Fatal(closeErr)
	}
	if st.Kicks > 0 {
		t.Logf("recording has %d watchdog kicks (host under load), each with a checkpoint", st.Kicks)
	}
	return batches, out, st
}

func TestRecordReplayThroughTheCodec(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	for _, name := range []string{"pit", "hltwake", "window"} {
		for _, every := range []uint64{1, 64} {
			t.Run(fmt.Sprintf("%s/mark-every-%d", name, every), func(t *testing.T) {
				batches, pout, pst := record(t, name, replay.RecorderOptions{MarkEvery: every, BatchBytes: 256})
				size := 0
				for _, b := range batches {
					size += len(b)
				}
				rep, err := replay.NewReplayer(batches)
				if err != nil {
					t.Fatal(err)
				}
				bout, bst, reason, err := runGuest(t, name, vm.Config{Replay: rep})
				if err != nil {
					t.Fatalf("backup: %v", err)
				}
				t.Logf("%d exits logged in %d events, %d bytes in %d batches (%.1f bytes/exit); backup stopped: %v",
					pst.SyncExits, rep.Len(), size, len(batches), float64(size)/float64(pst.SyncExits), reason)
				if reason != vm.StoppedPowerOff || bst.SyncExits != pst.SyncExits || bst.Injected != pst.Injected || bout != pout {
					t.Fatalf("backup: %v after %d exits, %d injections, printed %q; primary: %d, %d, %q",
						reason, bst.SyncExits, bst.Injected, bout, pst.SyncExits, pst.Injected, pout)
				}
			})
		}
	}
}

// TestReplayCatchesAlteredClockRead re-encodes a recording with one PM
// timer value moved 10 ms later: the guest leaves its timing loop early and
// the replay stops at the very next exit, whose RIP differs.
func TestReplayCatchesAlteredClockRead(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	batches, _, _ := record(t, "window", replay.RecorderOptions{MarkEvery: 1})
	var events []replay.Event
	var d replay.Decoder
	for _, b := range batches {
		if err := d.Reset(b); err != nil {
			t.Fatal(err)
		}
		for {
			var ev replay.Event
			if err := d.Next(&ev); err != nil {
				break
			}
			events = append(events, ev)
		}
	}
	// The timing loop's IN is the RIP that reads the clock most often.
	ripOf := map[uint64]uint64{} // exit -> RIP
	reads := map[uint64]int{}    // RIP -> clock reads
	for _, ev := range events {
		switch ev.Type {
		case replay.ExitMark:
			ripOf[ev.Exit] = ev.RIP
		case replay.ClockRead:
			reads[ripOf[ev.Exit]]++
		}
	}
	var loopRIP uint64
	for rip, n := range reads {
		if n > reads[loopRIP] {
			loopRIP = rip
		}
	}
	altered := -1
	for i, ev := range events {
		if ev.Type == replay.ClockRead && ripOf[ev.Exit] == loopRIP {
			altered = i
			break
		}
	}
	if altered < 0 {
		t.Fatal("no clock read in the timing loop")
	}
	events[altered].Value += int64(10 * time.Millisecond)
	var enc replay.Encoder
	enc.Begin(nil)
	for i := range events {
		if err := enc.Append(&events[i]); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := replay.NewReplayer([][]byte{enc.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, err = runGuest(t, "window", vm.Config{Replay: rep})
	var de *vm.DivergenceError
	if !errors.As(err, &de) {
		t.Fatalf("replay of an altered log: err = %v, want a divergence", err)
	}
	t.Logf("altered the clock read at exit #%d; reported: %v", events[altered].Exit, err)
	if de.Exit != events[altered].Exit+1 {
		t.Fatalf("divergence at exit #%d, want #%d", de.Exit, events[altered].Exit+1)
	}
}
