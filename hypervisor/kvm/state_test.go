//go:build linux && amd64

package kvm_test

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// TestCheckpointStateIoctls writes each piece of vCPU state the checkpoint
// bindings cover and reads it back: XSAVE (with MXCSR, which KVM_GET_FPU
// drops), XCR0, the debug registers, and the MSR and CPUID lists.
func TestCheckpointStateIoctls(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	g := newGuest(t, []byte{0xF4}, 0)
	for _, c := range []kvm.Cap{kvm.CapXSave, kvm.CapXCRs, kvm.CapDebugRegs, kvm.CapVCPUEvents} {
		n, err := g.sys.CheckExtension(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("capability %d: %d", c, n)
	}

	msrs, err := g.sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KVM_GET_MSR_INDEX_LIST: %d MSRs", len(msrs))
	for _, want := range []uint32{0x174, 0xc0000081, 0xc0000082, 0xc0000102, 0x277} {
		if !slices.Contains(msrs, want) {
			t.Errorf("MSR index list lacks %#x", want)
		}
	}

	supported, err := g.sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.vcpu.SetCPUID2(supported); err != nil {
		t.Fatal(err)
	}
	back, err := g.vcpu.GetCPUID2()
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(supported) {
		t.Errorf("GetCPUID2 returned %d entries, SetCPUID2 set %d", len(back), len(supported))
	}

	var x kvm.XSave
	if err := g.vcpu.GetXSave(&x); err != nil {
		t.Fatal(err)
	}
	b := x.Bytes()
	t.Logf("XSAVE at reset: FCW %#x MXCSR %#x XSTATE_BV %#x", binary.LittleEndian.Uint16(b[0:]), binary.LittleEndian.Uint32(b[24:]), binary.LittleEndian.Uint64(b[512:]))
	binary.LittleEndian.PutUint32(b[24:], 0x1f80|0x6000) // MXCSR: round toward zero
	b[160] = 0x5a                                        // XMM0 byte 0
	binary.LittleEndian.PutUint64(b[512:], binary.LittleEndian.Uint64(b[512:])|3)
	if err := g.vcpu.SetXSave(&x); err != nil {
		t.Fatal(err)
	}
	var x2 kvm.XSave
	if err := g.vcpu.GetXSave(&x2); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(x2.Bytes()[24:]); got != 0x7f80 || x2.Bytes()[160] != 0x5a {
		t.Errorf("XSAVE read back MXCSR %#x XMM0[0] %#x, want 0x7f80 0x5a", got, x2.Bytes()[160])
	}
	var f kvm.FPU
	if err := g.vcpu.GetFPU(&f); err != nil {
		t.Fatal(err)
	}
	if f.XMM[0][0] != 0x5a {
		t.Errorf("KVM_GET_FPU sees XMM0[0] %#x after KVM_SET_XSAVE, want 0x5a", f.XMM[0][0])
	}

	var xcrs kvm.XCRs
	if err := g.vcpu.GetXCRs(&xcrs); err != nil {
		t.Fatal(err)
	}
	t.Logf("XCRs: %d, XCR0 %#x", xcrs.NrXCRs, xcrs.XCRs[0].Value)
	if xcrs.NrXCRs != 1 || xcrs.XCRs[0].XCR != 0 || xcrs.XCRs[0].Value&1 == 0 {
		t.Errorf("KVM_GET_XCRS: %d registers, first XCR%d = %#x; want XCR0 with x87 set", xcrs.NrXCRs, xcrs.XCRs[0].XCR, xcrs.XCRs[0].Value)
	}
	if err := g.vcpu.SetXCRs(&xcrs); err != nil {
		t.Fatal(err)
	}
	bad := xcrs
	bad.XCRs[0].Value = 0 // x87 must stay enabled
	if err := g.vcpu.SetXCRs(&bad); err == nil {
		t.Error("KVM_SET_XCRS accepted XCR0 = 0")
	}

	var d kvm.DebugRegs
	if err := g.vcpu.GetDebugRegs(&d); err != nil {
		t.Fatal(err)
	}
	t.Logf("debug regs at reset: DR6 %#x DR7 %#x", d.DR6, d.DR7)
	d.DB = [4]uint64{0xdead0000, 0xdead1000, 0xdead2000, 0xdead3000}
	d.DR7 = 0x400 | 1<<1 // reserved bit 10 and G0: a breakpoint at DR0
	if err := g.vcpu.SetDebugRegs(&d); err != nil {
		t.Fatal(err)
	}
	var d2 kvm.DebugRegs
	if err := g.vcpu.GetDebugRegs(&d2); err != nil {
		t.Fatal(err)
	}
	if d2.DB != d.DB || d2.DR7 != d.DR7 {
		t.Errorf("debug regs read back DR0-3 %#x DR7 %#x, want %#x %#x", d2.DB, d2.DR7, d.DB, d.DR7)
	}
	d.Flags = 1
	if err := g.vcpu.SetDebugRegs(&d); err == nil {
		t.Error("KVM_SET_DEBUGREGS accepted non-zero flags")
	}
}
