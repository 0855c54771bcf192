package replay

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

func TestOutputKindsMatchVM(t *testing.T) {
	// Replayer messages show a logged kind as a vm.OutputKind.
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
		{"another frame", []out{{vm.OutputFrame, 0, 0, "frame bytez"}, write}, "the backup's device 0 produced a frame (11 bytes) that differs from the primary's"},
		{"write at another offset", []out{frame, {vm.OutputDiskWrite, 1, 8192, "sector"}}, "(6 bytes at 8192) that differs"},
		{"write on another disk", []out{frame, {vm.OutputDiskWrite, 0, 4096, "sector"}}, "the primary's device 1 produced a disk write there"},
		{"outputs swapped", []out{write, frame}, "the primary's device 0 produced a frame there"},
		{"one output more", []out{frame, write, frame}, "the log has"},
		{"one output less", []out{frame}, "the primary's device 1 produced a disk write at this exit; the backup's devices produced nothing"},
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
