package virtio

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/devices"
)

const version1 = uint64(1) << FeatureVersion1

var _ devices.MMIODevice = (*Transport)(nil)

func TestIdentityRegisters(t *testing.T) {
	e := newEnv(t, 1<<16, 16, 64)
	for _, c := range []struct {
		off  uint64
		want uint32
	}{
		{regMagicValue, 0x74726976},
		{regVersion, 2},
		{regDeviceID, 0x2a},
		{regVendorID, VendorID},
		{regStatus, 0},
		{regInterruptStatus, 0},
	} {
		if got := e.r32(c.off); got != c.want {
			t.Errorf("register %#x = %#x, want %#x", c.off, got, c.want)
		}
	}
	e.w32(regDeviceFeaturesSel, 0)
	lo := e.r32(regDeviceFeatures)
	e.w32(regDeviceFeaturesSel, 1)
	hi := e.r32(regDeviceFeatures)
	e.w32(regDeviceFeaturesSel, 2)
	if e.r32(regDeviceFeatures) != 0 {
		t.Error("feature page 2 not zero")
	}
	want := uint64(1<<5) | 1<<FeatureIndirectDesc | 1<<FeatureEventIdx | version1
	if got := uint64(hi)<<32 | uint64(lo); got != want {
		t.Errorf("device features %#x, want %#x", got, want)
	}
	for sel, max := range []uint32{16, 64, 0} {
		e.w32(regQueueSel, uint32(sel))
		if got := e.r32(regQueueNumMax); got != max {
			t.Errorf("queue %d QueueNumMax = %d, want %d", sel, got, max)
		}
	}
	// Registers take only aligned 32-bit accesses; config space any.
	var b2 [2]byte
	e.tr.ReadMMIO(testBase+regMagicValue, b2[:])
	if b2 != [2]byte{} {
		t.Errorf("16-bit register read = %x, want zero", b2)
	}
	e.dev.config = [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	var b8 [8]byte
	e.tr.ReadMMIO(testBase+0x100, b8[:])
	if b8 != e.dev.config {
		t.Errorf("config read %x", b8)
	}
	e.tr.WriteMMIO(testBase+0x102, []byte{0xee})
	if e.dev.config[2] != 0xee {
		t.Errorf("config write missed: %x", e.dev.config)
	}
	if got := e.tr.CmdlineParam(); got != "virtio_mmio.device=0x1000@0xd0000000:5" {
		t.Errorf("CmdlineParam = %q", got)
	}
}

func TestEchoEndToEnd(t *testing.T) {
	e := newEnv(t, 1<<20)
	q := e.start(version1, 8)
	if e.dev.activated != 1 || e.dev.negotiated != version1 {
		t.Fatalf("activated %d with %#x", e.dev.activated, e.dev.negotiated)
	}
	if e.r32(regQueueReady) != 1 {
		t.Fatal("QueueReady reads 0")
	}
	copy(e.ram[dataBuf:], "hello, ")
	copy(e.ram[dataBuf+0x100:], "virtio")
	head := e.addChain(q,
		buf{addr: dataBuf, len: 7},
		buf{addr: dataBuf + 0x100, len: 6},
		buf{addr: dataBuf + 0x1000, len: 4, write: true},
		buf{addr: dataBuf + 0x2000, len: 100, write: true},
	)
	e.kick(0)
	if e.usedIdx(q) != 1 {
		t.Fatalf("used idx %d, want 1; log:\n%s", e.usedIdx(q), e.logs)
	}
	if id, n := e.usedElem(q, 0); id != uint32(head) || n != 13 {
		t.Errorf("used elem {%d %d}, want {%d 13}", id, n, head)
	}
	if got := string(e.ram[dataBuf+0x1000:dataBuf+0x1004]) + string(e.ram[dataBuf+0x2000:dataBuf+0x2009]); got != "hello, virtio" {
		t.Errorf("echoed %q", got)
	}
	if e.r32(regInterruptStatus) != InterruptUsedBuffer || !e.sink.high || e.sink.rising != 1 {
		t.Fatalf("interrupt status %#x line %v edges %d", e.r32(regInterruptStatus), e.sink.high, e.sink.rising)
	}
	e.w32(regInterruptACK, InterruptUsedBuffer)
	if e.r32(regInterruptStatus) != 0 || e.sink.high {
		t.Fatal("ACK did not clear the status and lower the line")
	}

	// A second round reuses descriptors after the first was used.
	for i := range 3 {
		e.addChain(q, buf{addr: dataBuf, len: 2}, buf{addr: dataBuf + 0x3000 + uint64(i)*16, len: 16, write: true})
	}
	e.kick(0)
	if e.usedIdx(q) != 4 || e.sink.rising != 2 {
		t.Fatalf("used idx %d edges %d", e.usedIdx(q), e.sink.rising)
	}
	e.checkGuards()

	// Reset: status 0 resets device, queues and interrupts (the first
	// reset was negotiate's).
	e.w32(regStatus, 0)
	if e.dev.resets != 2 || e.r32(regStatus) != 0 || e.r32(regInterruptStatus) != 0 || e.sink.high {
		t.Fatalf("reset: resets %d status %#x int %#x line %v", e.dev.resets, e.r32(regStatus), e.r32(regInterruptStatus), e.sink.high)
	}
	e.w32(regQueueSel, 0)
	if e.r32(regQueueReady) != 0 || e.r32(regQueueNum) != 16 || e.r32(regQueueDescLow) != 0 {
		t.Fatal("queue state survived reset")
	}
	e.kick(0) // not activated: ignored
	if e.dev.notifies != 2 {
		t.Fatalf("notify after reset reached the device")
	}
	// And it comes back.
	clear(e.ram[:0x4000])
	q = e.start(version1, 8)
	e.addChain(q, buf{addr: dataBuf, len: 1}, buf{addr: dataBuf + 0x1000, len: 1, write: true})
	e.kick(0)
	if e.usedIdx(q) != 1 {
		t.Fatal("device dead after reset")
	}
	if e.errorLogs() != 0 {
		t.Errorf("error logs:\n%s", e.logs)
	}
}

func TestFeatureNegotiation(t *testing.T) {
	e := newEnv(t, 1<<16)
	if e.negotiate(0) {
		t.Error("FEATURES_OK accepted without VERSION_1")
	}
	if e.negotiate(version1 | 1<<7) {
		t.Error("FEATURES_OK accepted with a feature not offered")
	}
	if e.negotiate(version1 | 1<<40) {
		t.Error("FEATURES_OK accepted with a high feature not offered")
	}
	// DRIVER_OK without FEATURES_OK is refused.
	e.driverOK()
	if e.r32(regStatus)&StatusDriverOK != 0 || e.dev.activated != 0 {
		t.Error("DRIVER_OK accepted without FEATURES_OK")
	}
	// FEATURES_OK before DRIVER is refused.
	e.w32(regStatus, 0)
	e.w32(regDriverFeaturesSel, 1)
	e.w32(regDriverFeatures, 1)
	e.w32(regStatus, StatusFeaturesOK)
	if e.r32(regStatus)&StatusFeaturesOK != 0 {
		t.Error("FEATURES_OK accepted before ACKNOWLEDGE|DRIVER")
	}
	all := version1 | 1<<5 | 1<<FeatureEventIdx | 1<<FeatureIndirectDesc
	if !e.negotiate(all) {
		t.Fatal("full offer refused")
	}
	// Features are frozen after FEATURES_OK.
	e.w32(regDriverFeaturesSel, 0)
	e.w32(regDriverFeatures, 0)
	// Clearing a status bit without reset is ignored.
	e.w32(regStatus, StatusAcknowledge)
	if e.r32(regStatus) != StatusAcknowledge|StatusDriver|StatusFeaturesOK {
		t.Errorf("status %#x after an attempt to clear bits", e.r32(regStatus))
	}
	e.setupQueue(0, 16, q0Desc, q0Avail, q0Used)
	e.driverOK()
	if e.dev.negotiated != all {
		t.Errorf("device activated with %#x, want %#x", e.dev.negotiated, all)
	}
	// Queue registers are frozen after DRIVER_OK.
	e.w32(regQueueNum, 4)
	if e.r32(regQueueNum) != 16 {
		t.Error("QueueNum changed after DRIVER_OK")
	}
	// The driver may set FAILED.
	e.w32(regStatus, e.r32(regStatus)|StatusFailed)
	if e.r32(regStatus)&StatusFailed == 0 {
		t.Error("FAILED not stored")
	}
}

// QueueReady before FEATURES_OK is ignored (the spec orders features
// first); QueueReady 0 disables the queue.
func TestQueueReadyOrdering(t *testing.T) {
	e := newEnv(t, 1<<16)
	e.w32(regStatus, StatusAcknowledge|StatusDriver)
	e.setupQueue(0, 16, q0Desc, q0Avail, q0Used)
	if e.r32(regQueueReady) != 0 {
		t.Fatal("queue ready before FEATURES_OK")
	}
	if !e.negotiate(version1) {
		t.Fatal("negotiate")
	}
	e.setupQueue(0, 16, q0Desc, q0Avail, q0Used)
	if e.r32(regQueueReady) != 1 {
		t.Fatal("queue not ready")
	}
	e.w32(regQueueReady, 0)
	if e.r32(regQueueReady) != 0 {
		t.Fatal("QueueReady 0 ignored")
	}
	if failed, _ := e.tr.Failed(); failed {
		t.Fatal("failed")
	}
}

// Every new interrupt condition gives the edge-triggered PIC a fresh
// rising edge even while InterruptStatus is still non-zero; the line
// drops only when everything is ACKed.
func TestInterruptPulses(t *testing.T) {
	e := newEnv(t, 1<<20)
	q := e.start(version1, 8)
	for i := range 3 {
		e.addChain(q, buf{addr: dataBuf, len: 1}, buf{addr: dataBuf + 0x1000, len: 1, write: true})
		e.kick(0)
		if e.sink.rising != i+1 || !e.sink.high {
			t.Fatalf("kick %d: edges %d line %v", i, e.sink.rising, e.sink.high)
		}
	}
	e.dev.sig.ConfigChanged()
	if e.r32(regInterruptStatus) != InterruptUsedBuffer|InterruptConfigChange || e.sink.rising != 4 {
		t.Fatalf("status %#x edges %d", e.r32(regInterruptStatus), e.sink.rising)
	}
	if e.r32(regConfigGeneration) != 1 {
		t.Error("ConfigGeneration not bumped")
	}
	e.w32(regInterruptACK, InterruptUsedBuffer)
	if !e.sink.high {
		t.Fatal("line dropped with config-change still pending")
	}
	e.w32(regInterruptACK, InterruptConfigChange)
	if e.sink.high || e.r32(regInterruptStatus) != 0 {
		t.Fatal("line still high after full ACK")
	}
}

func TestActivateErrorFails(t *testing.T) {
	e := newEnv(t, 1<<16)
	d := &failingActivate{echoDev: e.dev}
	var err error
	e.tr, err = NewTransport(d, TransportConfig{Base: testBase, IRQ: testIRQ, IRQSink: e.sink, Memory: e.mem, Logger: e.tr.log})
	if err != nil {
		t.Fatal(err)
	}
	e.negotiate(version1)
	e.setupQueue(0, 16, q0Desc, q0Avail, q0Used)
	e.driverOK()
	e.expectFailed("backend unavailable")
}

type failingActivate struct{ *echoDev }

func (f *failingActivate) Activate(uint64, []*Queue, *Memory, Signaller) error {
	return errString("backend unavailable")
}

type errString string

func (e errString) Error() string { return string(e) }

func TestNewTransportRejectsBadQueues(t *testing.T) {
	mem := NewMemory(make([]byte, 4096))
	for _, sizes := range [][]uint16{nil, {0}, {3}, {16, 100}} {
		_, err := NewTransport(&echoDev{sizes: sizes}, TransportConfig{Base: testBase, IRQSink: &fakeSink{t: t}, Memory: mem})
		if err == nil {
			t.Errorf("sizes %v accepted", sizes)
		}
	}
}

// Status reads back DEVICE_NEEDS_RESET after a failure even when the
// driver writes status without it, and a reset clears it.
func TestFailureSurvivesStatusWritesUntilReset(t *testing.T) {
	e := newEnv(t, 1<<20)
	q := e.start(version1, 8)
	e.addChain(q, buf{addr: 1 << 40, len: 1})
	e.kick(0)
	e.expectFailed("outside guest RAM")
	e.w32(regStatus, e.r32(regStatus)&^StatusDeviceNeedsReset|StatusFailed)
	if e.r32(regStatus)&StatusDeviceNeedsReset == 0 {
		t.Fatal("DEVICE_NEEDS_RESET lost")
	}
	notifies := e.dev.notifies
	e.kick(0)
	if e.dev.notifies != notifies {
		t.Fatal("failed device still notified")
	}
	e.w32(regStatus, 0)
	if failed, _ := e.tr.Failed(); failed || e.r32(regStatus) != 0 {
		t.Fatal("reset did not clear the failure")
	}
	if !bytes.Contains(e.logs.Bytes(), []byte("queue=0")) || strings.Count(e.logs.String(), "level=ERROR") != 1 {
		t.Fatalf("log:\n%s", e.logs)
	}
}
