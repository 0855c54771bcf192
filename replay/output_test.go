package replay

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

func TestOutputKindsMatchVM(t *testing.T) {
	// The recorder logs a vm.OutputKind as it is.
	if uint8(vm.OutputFrame) != OutputFrame || uint8(vm.OutputDiskWrite) != OutputDiskWrite {
		t.Fatal("vm and replay number output kinds differently")
	}
}

// recordOutputs records exit 7 producing a frame and a disk write, then
// exit 8 with nothing, and returns the log.
func recordOutputs(t *testing.T) [][]byte {
	t.Helper()
	var batches [][]byte
	rec := NewRecorder(func(b []byte) error {
		batches = append(batches, bytes.Clone(b))
		return nil
	}, RecorderOptions{DigestInterval: -1})
	rip := func() uint64 { return 0x1000 }
	// Outputs happen while the exit is handled, before Exit is called.
	rec.Output(7, vm.OutputFrame, 0, 0, []byte("frame bytes"))
	rec.Output(7, vm.OutputDiskWrite, 1, 4096, []byte("sector"))
	rec.Exit(7, kvm.ExitMMIO, 0xd0000050, rip)
	rec.Exit(8, kvm.ExitIO, 0x3f8, rip)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	return batches
}

func TestReplayerComparesOutputs(t *testing.T) {
	type out struct {
		kind vm.OutputKind
		dev  int
		off  int64
		data string
	}
	frame := out{vm.OutputFrame, 0, 0, "frame bytes"}
	write := out{vm.OutputDiskWrite, 1, 4096, "sector"}
	for _, tc := range []struct {
		name string
		outs []out
		want string // "" when the backup matches
	}{
		{"same outputs", []out{frame, write}, ""},
		{"another frame", []out{{vm.OutputFrame, 0, 0, "frame bytez"}, write}, "the backup's NIC 0 sent a frame of 11 bytes, other bytes than the primary's"},
		{"write at another offset", []out{frame, {vm.OutputDiskWrite, 1, 8192, "sector"}}, "the backup's disk 1 wrote 6 bytes at 8192, other bytes"},
		{"write on another disk", []out{frame, {vm.OutputDiskWrite, 0, 4096, "sector"}}, "the backup's disk 0 wrote 6 bytes at 4096; the primary's disk 1 wrote there"},
		{"outputs swapped", []out{write, frame}, "the primary's NIC 0 sent a frame there"},
		{"one output more", []out{frame, write, frame}, "the log has"},
		{"one output less", []out{frame}, "the primary's disk 1 wrote at this exit; the backup's devices produced nothing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := NewReplayer(recordOutputs(t))
			if err != nil {
				t.Fatal(err)
			}
			var got error
			for _, o := range tc.outs {
				if got = rep.Output(7, o.kind, o.dev, o.off, []byte(o.data)); got != nil {
					break
				}
			}
			if got == nil {
				got = rep.Exit(7, kvm.ExitMMIO, 0xd0000050, func() uint64 { return 0x1000 })
			}
			if got == nil {
				_, _, got = rep.Next(7, nil)
			}
			switch {
			case tc.want == "" && got != nil:
				t.Fatalf("matching outputs: %v", got)
			case tc.want != "" && (got == nil || !strings.Contains(got.Error(), tc.want)):
				t.Fatalf("got %v, want %q", got, tc.want)
			}
			if tc.want == "" && rep.Stats().Outputs != 2 {
				t.Fatalf("outputs matched %d, want 2", rep.Stats().Outputs)
			}
		})
	}
}

// A matching output costs the backup's vCPU loop no allocation.
func TestReplayerOutputNoAllocs(t *testing.T) {
	var batches [][]byte
	rec := NewRecorder(func(b []byte) error {
		batches = append(batches, bytes.Clone(b))
		return nil
	}, RecorderOptions{DigestInterval: -1})
	frame := bytes.Repeat([]byte{0xab}, 1514)
	for range 101 {
		rec.Output(7, vm.OutputFrame, 0, 0, frame)
	}
	rec.Exit(7, kvm.ExitMMIO, 0xd0000050, func() uint64 { return 0x1000 })
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := NewReplayer(batches)
	if err != nil {
		t.Fatal(err)
	}
	var failed error
	allocs := testing.AllocsPerRun(100, func() {
		if err := rep.Output(7, vm.OutputFrame, 0, 0, frame); err != nil && failed == nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per matched output", allocs)
	}
	// The entries consumed are still there for a divergence report.
	recent := rep.Recent()
	if len(recent) != 16 || !strings.HasPrefix(recent[15], "exit 7: output kind 1 dev 0 hash ") {
		t.Fatalf("recent entries: %q", recent)
	}
	t.Logf("last consumed: %s", recent[15])
}

// TestLazyOutputsAreHandedOnWithinTheirDelay: console bytes (a lazy output)
// do not flush the log at their own exit, but the first BeforeRun after
// LazyOutputDelay does, and an ordinary output flushes both at once.
func TestLazyOutputsAreHandedOnWithinTheirDelay(t *testing.T) {
	for _, tc := range []struct {
		name  string
		delay time.Duration
		also  bool // an ordinary output at exit 9
		want  []uint64
	}{
		{"waits for its delay", time.Hour, false, nil},
		{"flushed at the first BeforeRun past its delay", time.Nanosecond, false, []uint64{7}},
		{"flushed with an ordinary output", time.Hour, true, []uint64{9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls []uint64
			var cur uint64
			var batches int
			var rec *Recorder
			rec = NewRecorder(func([]byte) error { batches++; return nil }, RecorderOptions{
				DigestInterval: -1, LazyOutputDelay: tc.delay,
				SyncInterval:  -1, // no GuestState here to read the dirty log of
				OutputsLogged: func() { calls = append(calls, cur) },
			})
			rip := func() uint64 { return 0x1000 }
			cur = 7
			rec.NoteLazyOutput()
			rec.Exit(7, kvm.ExitIO, 0x3f8, rip)
			if err := rec.BeforeRun(7, nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
			cur = 8
			rec.Exit(8, kvm.ExitIO, 0x3f8, rip)
			if err := rec.BeforeRun(8, nil); err != nil {
				t.Fatal(err)
			}
			cur = 9
			if tc.also {
				rec.NoteOutput()
			}
			rec.Exit(9, kvm.ExitIO, 0x3f8, rip)
			if err := rec.BeforeRun(9, nil); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(calls, tc.want) {
				t.Fatalf("OutputsLogged at exits %v, want %v", calls, tc.want)
			}
			if len(tc.want) > 0 && batches == 0 {
				t.Fatal("OutputsLogged without a batch handed on")
			}
		})
	}
}
