//go:build linux && amd64

package kvm_test

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// These tests need no /dev/kvm: they decode kvm_run images written at the C
// offsets by hand, the way the kernel would have left them.

// runPage returns a zeroed, page-aligned two-page kvm_run image (KVM puts
// PIO data in the second page).
func runPage(t testing.TB) []byte {
	t.Helper()
	m, err := kvm.AllocateMemory(2 * os.Getpagesize())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m.Bytes()
}

func setIOExit(run []byte, in bool, size uint8, port uint16, count uint32, dataOff uint64) {
	binary.LittleEndian.PutUint32(run[8:], 2) // exit_reason = KVM_EXIT_IO
	run[32] = 1                               // KVM_EXIT_IO_OUT
	if in {
		run[32] = 0 // KVM_EXIT_IO_IN
	}
	run[33] = size
	binary.LittleEndian.PutUint16(run[34:], port)
	binary.LittleEndian.PutUint32(run[36:], count)
	binary.LittleEndian.PutUint64(run[40:], dataOff)
}

func TestDecodeIOExit(t *testing.T) {
	run := runPage(t)
	setIOExit(run, false, 2, 0x3f8, 1, 4096)
	run[4096], run[4097] = 0xef, 0xbe

	e := kvm.DecodeExit(run)
	if e.Kind != kvm.ExitIO || e.IO.Port != 0x3f8 || e.IO.Size != 2 || e.IO.In || e.IO.Count != 1 {
		t.Fatalf("decoded %+v, want OUT port 0x3f8 size 2 count 1", e)
	}
	if len(e.IO.Data) != 2 || binary.LittleEndian.Uint16(e.IO.Data) != 0xbeef {
		t.Fatalf("IO data %x, want ef be", e.IO.Data)
	}

	// An IN's result is written through Data into the page KVM reads back.
	setIOExit(run, true, 4, 0x510, 1, 4096)
	e = kvm.DecodeExit(run)
	if !e.IO.In || len(e.IO.Data) != 4 {
		t.Fatalf("decoded %+v, want IN of 4 bytes", e.IO)
	}
	binary.LittleEndian.PutUint32(e.IO.Data, 0x12345678)
	if got := binary.LittleEndian.Uint32(run[4096:]); got != 0x12345678 {
		t.Fatalf("run page holds %#x after writing IN data, want 0x12345678", got)
	}
	if cap(e.IO.Data) != 4 {
		t.Errorf("IO data capacity %d, want 4: an append must not scribble on the run page", cap(e.IO.Data))
	}

	// A string instruction (REP INSB) moves Size*Count bytes.
	setIOExit(run, true, 1, 0x60, 16, 4096)
	if e = kvm.DecodeExit(run); len(e.IO.Data) != 16 {
		t.Fatalf("REP INSB of 16: data length %d, want 16", len(e.IO.Data))
	}

	// A data_offset outside the mapping must not panic or alias other memory.
	setIOExit(run, false, 4, 0x80, 2, uint64(len(run))-4)
	if e = kvm.DecodeExit(run); e.IO.Data != nil {
		t.Fatalf("out-of-range data_offset gave %d bytes of data, want none", len(e.IO.Data))
	}
}

func TestDecodeMMIOExit(t *testing.T) {
	run := runPage(t)
	binary.LittleEndian.PutUint32(run[8:], 6) // KVM_EXIT_MMIO
	binary.LittleEndian.PutUint64(run[32:], 0xfee00030)
	copy(run[40:], []byte{1, 2, 3, 4})
	binary.LittleEndian.PutUint32(run[48:], 4)
	run[52] = 1

	e := kvm.DecodeExit(run)
	if e.Kind != kvm.ExitMMIO || e.MMIO.Addr != 0xfee00030 || !e.MMIO.IsWrite || string(e.MMIO.Data) != "\x01\x02\x03\x04" {
		t.Fatalf("decoded %+v, want 4-byte write of 01020304 to 0xfee00030", e.MMIO)
	}

	run[52] = 0
	binary.LittleEndian.PutUint32(run[48:], 2)
	e = kvm.DecodeExit(run)
	if e.MMIO.IsWrite || len(e.MMIO.Data) != 2 {
		t.Fatalf("decoded %+v, want 2-byte read", e.MMIO)
	}
	e.MMIO.Data[0], e.MMIO.Data[1] = 0xaa, 0xbb
	if run[40] != 0xaa || run[41] != 0xbb {
		t.Fatalf("MMIO read result not written into kvm_run.mmio.data")
	}

	binary.LittleEndian.PutUint32(run[48:], 99) // corrupt length
	if e = kvm.DecodeExit(run); len(e.MMIO.Data) != 8 {
		t.Fatalf("MMIO len 99 gave %d data bytes, want it clamped to 8", len(e.MMIO.Data))
	}
}

func TestDecodeOtherExits(t *testing.T) {
	run := runPage(t)
	put32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(run[off:], v) }
	put64 := func(off int, v uint64) { binary.LittleEndian.PutUint64(run[off:], v) }

	put32(8, 5)
	if e := kvm.DecodeExit(run); e.Kind != kvm.ExitHLT {
		t.Errorf("exit reason 5 decoded as %v, want HLT", e.Kind)
	}

	put32(8, 17) // KVM_EXIT_INTERNAL_ERROR
	put32(32, kvm.InternalErrorEmulation)
	put32(36, 3)
	put64(40, 0x11)
	put64(48, 0x22)
	put64(56, 0x33)
	e := kvm.DecodeExit(run)
	if e.Kind != kvm.ExitInternalError || e.Internal.Suberror != kvm.InternalErrorEmulation ||
		len(e.Internal.Data) != 3 || e.Internal.Data[0] != 0x11 || e.Internal.Data[2] != 0x33 {
		t.Errorf("decoded %+v, want emulation failure with data 11 22 33", e.Internal)
	}

	put32(8, 24) // KVM_EXIT_SYSTEM_EVENT
	put32(32, kvm.SystemEventReset)
	put32(36, 1)
	put64(40, 7)
	e = kvm.DecodeExit(run)
	if e.Kind != kvm.ExitSystemEvent || e.SystemEvent.Type != kvm.SystemEventReset || len(e.SystemEvent.Data) != 1 || e.SystemEvent.Data[0] != 7 {
		t.Errorf("decoded %+v, want reset with data [7]", e.SystemEvent)
	}

	put32(8, 9) // KVM_EXIT_FAIL_ENTRY
	put64(32, 0x80000021)
	put32(40, 1)
	e = kvm.DecodeExit(run)
	if e.Kind != kvm.ExitFailEntry || e.FailEntry.HardwareEntryFailureReason != 0x80000021 || e.FailEntry.CPU != 1 {
		t.Errorf("decoded %+v, want entry failure 0x80000021 on cpu 1", e.FailEntry)
	}

	put32(8, 4) // KVM_EXIT_DEBUG
	put32(32, 1)
	put64(40, 0x1003)
	put64(48, 0xffff4ff0)
	put64(56, 0x400)
	e = kvm.DecodeExit(run)
	if e.Kind != kvm.ExitDebug || e.Debug.Exception != 1 || e.Debug.PC != 0x1003 || e.Debug.DR6 != 0xffff4ff0 || e.Debug.DR7 != 0x400 {
		t.Errorf("decoded %+v, want #DB at 0x1003", e.Debug)
	}

	put32(8, 0) // KVM_EXIT_UNKNOWN
	put64(32, 0x7b)
	if e = kvm.DecodeExit(run); e.Kind != kvm.ExitUnknown || e.HardwareExitReason != 0x7b {
		t.Errorf("decoded %+v, want unknown with hardware reason 0x7b", e)
	}
}

func TestExitKindString(t *testing.T) {
	for k, want := range map[kvm.ExitKind]string{
		kvm.ExitIO: "IO", kvm.ExitHLT: "HLT", kvm.ExitMMIO: "MMIO", kvm.ExitInterrupted: "INTR",
		kvm.ExitIRQWindowOpen: "IRQ_WINDOW_OPEN", kvm.ExitInternalError: "INTERNAL_ERROR",
		kvm.ExitShutdown: "SHUTDOWN", kvm.ExitKind(200): "ExitKind(200)",
	} {
		if got := k.String(); got != want {
			t.Errorf("ExitKind(%d).String() = %q, want %q", uint32(k), got, want)
		}
	}
}

// TestDecodeDoesNotAllocate guards the hot path: one exit, zero allocations.
func TestDecodeDoesNotAllocate(t *testing.T) {
	run := runPage(t)
	setIOExit(run, true, 1, 0x3f8, 1, 4096)
	var sink kvm.Exit
	if n := testing.AllocsPerRun(1000, func() { sink = kvm.DecodeExit(run) }); n != 0 {
		t.Errorf("decoding an IO exit allocates %v times, want 0", n)
	}
	binary.LittleEndian.PutUint32(run[8:], 17)
	if n := testing.AllocsPerRun(1000, func() { sink = kvm.DecodeExit(run) }); n != 0 {
		t.Errorf("decoding an internal-error exit allocates %v times, want 0", n)
	}
	_ = sink
}

func BenchmarkDecodeIOExit(b *testing.B) {
	run := runPage(b)
	setIOExit(run, false, 1, 0x3f8, 1, 4096)
	b.ReportAllocs()
	var n int
	for b.Loop() {
		n += len(kvm.DecodeExit(run).IO.Data)
	}
	_ = n
}

func TestRunPageFlags(t *testing.T) {
	run := runPage(t)
	v := kvm.NewVCPUOnRunPage(run)

	v.SetRequestInterruptWindow(true)
	v.SetImmediateExit(true)
	if run[0] != 1 || run[1] != 1 {
		t.Fatalf("request_interrupt_window, immediate_exit = %d, %d; want 1, 1", run[0], run[1])
	}
	v.SetImmediateExit(false)
	if run[0] != 1 || run[1] != 0 {
		t.Fatalf("clearing immediate_exit left bytes %d, %d; want 1, 0", run[0], run[1])
	}
	v.SetRequestInterruptWindow(false)
	if run[0] != 0 {
		t.Fatalf("request_interrupt_window = %d after clearing", run[0])
	}

	run[12], run[13] = 1, 0
	if !v.ReadyForInterruptInjection() || v.IFFlag() {
		t.Fatalf("ready=%v if=%v, want true false", v.ReadyForInterruptInjection(), v.IFFlag())
	}
	run[12], run[13] = 0, 1
	if v.ReadyForInterruptInjection() || !v.IFFlag() {
		t.Fatalf("ready=%v if=%v, want false true", v.ReadyForInterruptInjection(), v.IFFlag())
	}
}

// TestKickSurvivesSignal kicks the test's own thread: the process must take
// the kick signal without dying, and immediate_exit must end up set.
func TestKickSurvivesSignal(t *testing.T) {
	lockThread(t)
	run := runPage(t)
	v := kvm.NewVCPUOnRunPage(run)
	k, err := v.NewKicker()
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if err := k.Kick(); err != nil {
			t.Fatal(err)
		}
	}
	if run[1] != 1 {
		t.Fatalf("immediate_exit = %d after Kick, want 1", run[1])
	}
}

func TestOpenMissingDevice(t *testing.T) {
	_, err := kvm.Open("/nonexistent/kvm")
	if err == nil {
		t.Fatal("Open of a missing device succeeded")
	}
	if !strings.Contains(err.Error(), "open /nonexistent/kvm") || !strings.Contains(err.Error(), "is KVM available?") {
		t.Fatalf("error %q does not say which device and how to check for KVM", err)
	}
}

func TestAllocateMemoryRejectsBadSize(t *testing.T) {
	for _, n := range []int{0, -4096, 100} {
		if m, err := kvm.AllocateMemory(n); err == nil {
			m.Close()
			t.Errorf("AllocateMemory(%d) succeeded", n)
		}
	}
}
