package virtio

import (
	"net"
	"reflect"
	"strings"
	"testing"
)

// restoredEnv builds a second machine with a copy of e's guest memory and
// a transport restored from e's state.
func restoredEnv(t *testing.T, e *env, sizes ...uint16) *env {
	t.Helper()
	r := newEnv(t, len(e.ram), sizes...)
	copy(r.ram, e.ram)
	r.sink.high = e.sink.high // the PIC's restored line
	if err := r.tr.SetState(e.tr.State()); err != nil {
		t.Fatal(err)
	}
	if r.sink.rising != 0 {
		t.Fatal("SetState raised an interrupt")
	}
	return r
}

// TestTransportRestoredMidStream: a queue with used entries behind it and
// chains waiting, event-index interrupt suppression armed; the restored
// transport serves the waiting chains into the same used slots, decides
// interrupts the same way, and reads back the same registers.
func TestTransportRestoredMidStream(t *testing.T) {
	a := newEnv(t, 1<<20)
	feat := uint64(1)<<FeatureVersion1 | 1<<FeatureEventIdx
	qa := a.start(feat, 8)
	for i := range 5 {
		a.addChain(qa, buf{dataBuf + uint64(i)*64, 16, false}, buf{dataBuf + 0x1000 + uint64(i)*64, 16, true})
	}
	a.kick(0)
	a.put16(qa.avail+4+2*uint64(qa.size), 6) // used_event: interrupt once used idx passes 6
	a.addChain(qa, buf{dataBuf, 8, false}, buf{dataBuf + 0x2000, 8, true})
	a.addChain(qa, buf{dataBuf, 8, false}, buf{dataBuf + 0x2100, 8, true})
	a.w32(regQueueSel, 0)

	b := restoredEnv(t, a)
	if !reflect.DeepEqual(a.tr.State(), b.tr.State()) {
		t.Fatalf("restored state differs:\n%+v\n%+v", a.tr.State(), b.tr.State())
	}
	qb := *qa
	for _, off := range []uint64{regStatus, regQueueSel, regQueueNum, regQueueReady, regQueueDescLow,
		regQueueDriverLow, regQueueDeviceLow, regInterruptStatus, regConfigGeneration} {
		if x, y := a.r32(off), b.r32(off); x != y {
			t.Fatalf("register %#x reads %#x, restored %#x", off, x, y)
		}
	}
	risingA := a.sink.rising
	a.kick(0)
	b.kick(0)
	if a.usedIdx(qa) != 7 || b.usedIdx(&qb) != 7 {
		t.Fatalf("used idx %d, restored %d, want 7", a.usedIdx(qa), b.usedIdx(&qb))
	}
	for i := uint16(0); i < 7; i++ {
		ia, la := a.usedElem(qa, i)
		ib, lb := b.usedElem(&qb, i)
		if ia != ib || la != lb {
			t.Fatalf("used element %d: %d/%d, restored %d/%d", i, ia, la, ib, lb)
		}
	}
	if a.sink.rising-risingA != b.sink.rising {
		t.Fatalf("interrupts after the save: %d, restored %d", a.sink.rising-risingA, b.sink.rising)
	}
	if a.dev.activated != 1 || b.dev.activated != 1 {
		t.Fatalf("activations %d and %d", a.dev.activated, b.dev.activated)
	}
	b.checkGuards()
}

// TestTransportRestoredFailed: a failed device stays failed, with its
// reason, and still needs a reset.
func TestTransportRestoredFailed(t *testing.T) {
	a := newEnv(t, 1<<20)
	qa := a.start(1<<FeatureVersion1, 8)
	a.put16(qa.avail+2, 100) // avail idx far ahead of the ring
	a.kick(0)
	a.expectFailed("avail idx")
	b := restoredEnv(t, a)
	if failed, err := b.tr.Failed(); !failed || !strings.Contains(err.Error(), "avail idx") {
		t.Fatalf("restored device failed=%v (%v)", failed, err)
	}
	if b.r32(regStatus)&StatusDeviceNeedsReset == 0 {
		t.Fatal("restored status lacks DEVICE_NEEDS_RESET")
	}
	b.w32(regStatus, 0)
	if failed, _ := b.tr.Failed(); failed {
		t.Fatal("a reset did not clear the restored failure")
	}
}

// TestTransportStateRefused: states a transport cannot take change
// nothing.
func TestTransportStateRefused(t *testing.T) {
	a := newEnv(t, 1<<20)
	a.start(1<<FeatureVersion1, 8)
	good := a.tr.State()
	for name, mutate := range map[string]func(*TransportState){
		"ring outside memory": func(s *TransportState) { s.Queues[0].DeviceAddr = 1 << 40 },
		"oversized queue":     func(s *TransportState) { s.Queues[0].Size = 64 },
		"wrong device":        func(s *TransportState) { s.DeviceType = DeviceBlock },
		"queue count":         func(s *TransportState) { s.Queues = append(s.Queues, QueueState{}) },
		"unoffered feature":   func(s *TransportState) { s.DriverFeatures |= 1 << 40 },
		"device bytes":        func(s *TransportState) { s.Device = []byte{1} },
		"unknown status":      func(s *TransportState) { s.Status |= 0x100 },
	} {
		b := newEnv(t, 1<<20)
		before := b.tr.State()
		s := a.tr.State()
		mutate(&s)
		if err := b.tr.SetState(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if !reflect.DeepEqual(b.tr.State(), before) {
			t.Errorf("%s: the refused state changed the transport", name)
		}
	}
	b := newEnv(t, 1<<20)
	if err := b.tr.SetState(good); err != nil {
		t.Fatalf("the unchanged state: %v", err)
	}
}

// TestNetRestoredLinkDown: virtio-net's own state is its link status.
func TestNetRestoredLinkDown(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	send := func([]byte) {}
	a, err := NewNet(NetConfig{MAC: mac, Transmit: send})
	if err != nil {
		t.Fatal(err)
	}
	a.SetLink(false)
	b, _ := NewNet(NetConfig{MAC: mac, Transmit: send})
	if err := b.RestoreState(a.SaveState()); err != nil {
		t.Fatal(err)
	}
	var cfg [8]byte
	b.ReadConfig(0, cfg[:])
	if cfg[6] != 0 {
		t.Fatalf("restored link status %#x, want down", cfg[6])
	}
	if err := b.RestoreState([]byte{2, 0}); err == nil {
		t.Fatal("unknown link status bits accepted")
	}
}
