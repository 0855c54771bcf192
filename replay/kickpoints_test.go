package replay

import (
	"maps"
	"testing"
)

// TestKickPointsSayWhereTheGuestWas: each kick is counted as user or
// kernel by the CPL of the state it checkpointed, and kernel kicks by RIP.
func TestKickPointsSayWhereTheGuestWas(t *testing.T) {
	d := newDedupPair(t, RecorderOptions{})
	kicks := []struct {
		protected bool
		cpl       uint8
		rip       uint64
	}{
		{true, 3, 0x401000},           // user
		{true, 0, 0xffffffff81000010}, // kernel
		{true, 0, 0xffffffff81000010}, // the same kernel point again
		{true, 3, 0x402000},           // user
		{false, 3, 0x7c00},            // real mode: CPL 0 whatever SS says
		{true, 0, 0xffffffff81234560}, // another kernel point
	}
	for i, k := range kicks {
		n := uint64(i + 1)
		d.exit(t, n)
		d.p.cpu.Sregs.CR0 = 0
		if k.protected {
			d.p.cpu.Sregs.CR0 = 1
		}
		d.p.cpu.Sregs.SS.DPL, d.p.cpu.Regs.RIP = k.cpl, k.rip
		d.kick(t, n)
	}
	st := d.rec.Stats()
	if st.Checkpoints != 6 || st.KicksUser != 2 {
		t.Fatalf("checkpoints %d, user kicks %d; want 6 and 2", st.Checkpoints, st.KicksUser)
	}
	want := map[uint64]uint64{0xffffffff81000010: 2, 0xffffffff81234560: 1, 0x7c00: 1}
	if got := d.rec.KernelKickPoints(); !maps.Equal(got, want) {
		t.Fatalf("kernel kick points %#v, want %#v", got, want)
	}
}

// TestKickPointsAreBounded: past maxKickPoints distinct RIPs, kicks are
// counted under RIP 0 instead of growing the map.
func TestKickPointsAreBounded(t *testing.T) {
	r := NewRecorder(func([]byte) error { return nil }, RecorderOptions{})
	g := newMemGuest(1)
	for i := range maxKickPoints + 10 {
		g.cpu.Regs.RIP = uint64(0x1000 + i)
		r.countKickPoint(&g.cpu)
	}
	got := r.KernelKickPoints()
	if len(got) != maxKickPoints+1 || got[0] != 10 {
		t.Fatalf("%d distinct points, %d under RIP 0; want %d and 10", len(got), got[0], maxKickPoints+1)
	}
}
