package replay

import (
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// A recorder that starts on a running VM at exit 100 is told so: a frame
// the VM takes after exit 100 (a kick's end, before exit 101) belongs to
// exit 100 and goes into the log before exit 101's events. Not told, it
// would hold the frame for exit 100 until after exit 101's mark, and the
// log would go backwards.
func TestRecorderStartAtTakesInputsOfItsFirstExit(t *testing.T) {
	record := func(startAt bool) error {
		rec := NewRecorder(func([]byte) error { return nil }, RecorderOptions{MarkEvery: 1})
		if startAt {
			rec.StartAt(100)
		}
		rec.FrameReceived(100, 0, []byte("frame after the switch"))
		rec.Exit(101, kvm.ExitIO, 0x40, func() uint64 { return 0x1000 })
		rec.Flush()
		return rec.Close()
	}
	if err := record(true); err != nil {
		t.Fatalf("started at exit 100: %v", err)
	}
	if err := record(false); err == nil || !strings.Contains(err.Error(), "must not go backwards") {
		t.Fatalf("not told where it starts: %v; want the log to go backwards", err)
	}
}
