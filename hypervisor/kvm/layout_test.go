//go:build linux && amd64

package kvm

import (
	"testing"
	"unsafe"
)

// These tests run everywhere, without /dev/kvm. The expected numbers come
// from the kernel's uapi headers (include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h) as compiled for x86-64; a mismatch means
// a Go mirror has drifted from the C layout and every ioctl using it would
// corrupt memory.

func TestStructSizes(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_msrs (header)", unsafe.Sizeof(msrsHeader{}), 8},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry2{}), 40},
		{"kvm_cpuid2 (header)", unsafe.Sizeof(cpuid2Header{}), 8},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userspaceMemoryRegion{}), 32},
		{"kvm_dirty_log", unsafe.Sizeof(dirtyLog{}), 16},
		{"kvm_interrupt", unsafe.Sizeof(interrupt{}), 4},
		{"kvm_guest_debug", unsafe.Sizeof(guestDebug{}), 72},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"kvm_xsave", unsafe.Sizeof(XSave{}), 4096},
		{"kvm_xcr", unsafe.Sizeof(XCR{}), 16},
		{"kvm_xcrs", unsafe.Sizeof(XCRs{}), 392},
		{"kvm_debugregs", unsafe.Sizeof(DebugRegs{}), 128},
		{"kvm_msr_list (header)", unsafe.Sizeof(msrListHeader{}), 4},
		{"kvm_run header", unsafe.Sizeof(runHeader{}), 32},
		{"kvm_run.io", unsafe.Sizeof(runIO{}), 16},
		{"kvm_run.mmio", unsafe.Sizeof(runMMIO{}), 24},
		{"kvm_run.fail_entry", unsafe.Sizeof(runFailEntry{}), 16},
		{"kvm_run.ex", unsafe.Sizeof(runException{}), 8},
		{"kvm_run.debug", unsafe.Sizeof(runDebug{}), 32},
		{"kvm_run.internal", unsafe.Sizeof(runInternal{}), 136},
		{"kvm_run.system_event", unsafe.Sizeof(runSystemEvent{}), 136},
		{"struct kvm_run", runMinSize, 2352},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(%s) = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestFieldOffsets(t *testing.T) {
	var (
		r   Regs
		seg Segment
		s   Sregs
		f   FPU
		ev  VCPUEvents
		h   runHeader
		io  runIO
		m   runMMIO
		d   runDebug
		ie  runInternal
		xr  XCR
		xcr XCRs
		dr  DebugRegs
	)
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs.rip", unsafe.Offsetof(r.RIP), 128},
		{"kvm_regs.rflags", unsafe.Offsetof(r.RFLAGS), 136},
		{"kvm_segment.selector", unsafe.Offsetof(seg.Selector), 12},
		{"kvm_segment.type", unsafe.Offsetof(seg.Type), 14},
		{"kvm_segment.unusable", unsafe.Offsetof(seg.Unusable), 22},
		{"kvm_sregs.tr", unsafe.Offsetof(s.TR), 144},
		{"kvm_sregs.ldt", unsafe.Offsetof(s.LDT), 168},
		{"kvm_sregs.gdt", unsafe.Offsetof(s.GDT), 192},
		{"kvm_sregs.idt", unsafe.Offsetof(s.IDT), 208},
		{"kvm_sregs.cr0", unsafe.Offsetof(s.CR0), 224},
		{"kvm_sregs.cr8", unsafe.Offsetof(s.CR8), 256},
		{"kvm_sregs.efer", unsafe.Offsetof(s.EFER), 264},
		{"kvm_sregs.apic_base", unsafe.Offsetof(s.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(s.InterruptBitmap), 280},
		{"kvm_fpu.fcw", unsafe.Offsetof(f.FCW), 128},
		{"kvm_fpu.last_opcode", unsafe.Offsetof(f.LastOpcode), 134},
		{"kvm_fpu.last_ip", unsafe.Offsetof(f.LastIP), 136},
		{"kvm_fpu.xmm", unsafe.Offsetof(f.XMM), 152},
		{"kvm_fpu.mxcsr", unsafe.Offsetof(f.MXCSR), 408},
		{"kvm_vcpu_events.interrupt", unsafe.Offsetof(ev.Interrupt), 8},
		{"kvm_vcpu_events.nmi", unsafe.Offsetof(ev.NMI), 12},
		{"kvm_vcpu_events.sipi_vector", unsafe.Offsetof(ev.SIPIVector), 16},
		{"kvm_vcpu_events.flags", unsafe.Offsetof(ev.Flags), 20},
		{"kvm_vcpu_events.smi", unsafe.Offsetof(ev.SMI), 24},
		{"kvm_vcpu_events.triple_fault", unsafe.Offsetof(ev.TripleFault), 28},
		{"kvm_vcpu_events.exception_has_payload", unsafe.Offsetof(ev.ExceptionHasPayload), 55},
		{"kvm_vcpu_events.exception_payload", unsafe.Offsetof(ev.ExceptionPayload), 56},
		{"kvm_xcr.value", unsafe.Offsetof(xr.Value), 8},
		{"kvm_xcrs.xcrs", unsafe.Offsetof(xcr.XCRs), 8},
		{"kvm_xcrs.padding", unsafe.Offsetof(xcr.XCRs) + unsafe.Sizeof(xcr.XCRs), 264},
		{"kvm_debugregs.dr6", unsafe.Offsetof(dr.DR6), 32},
		{"kvm_debugregs.dr7", unsafe.Offsetof(dr.DR7), 40},
		{"kvm_debugregs.flags", unsafe.Offsetof(dr.Flags), 48},
		{"kvm_run.immediate_exit", unsafe.Offsetof(h.ImmediateExit), 1},
		{"kvm_run.exit_reason", unsafe.Offsetof(h.ExitReason), 8},
		{"kvm_run.ready_for_interrupt_injection", unsafe.Offsetof(h.ReadyForInterruptInjection), 12},
		{"kvm_run.if_flag", unsafe.Offsetof(h.IFFlag), 13},
		{"kvm_run.flags", unsafe.Offsetof(h.Flags), 14},
		{"kvm_run.cr8", unsafe.Offsetof(h.CR8), 16},
		{"kvm_run.apic_base", unsafe.Offsetof(h.APICBase), 24},
		{"kvm_run.io.port", unsafe.Offsetof(io.Port), 2},
		{"kvm_run.io.count", unsafe.Offsetof(io.Count), 4},
		{"kvm_run.io.data_offset", unsafe.Offsetof(io.DataOffset), 8},
		{"kvm_run.mmio.data", unsafe.Offsetof(m.Data), 8},
		{"kvm_run.mmio.len", unsafe.Offsetof(m.Len), 16},
		{"kvm_run.mmio.is_write", unsafe.Offsetof(m.IsWrite), 20},
		{"kvm_run.debug.pc", unsafe.Offsetof(d.PC), 8},
		{"kvm_run.debug.dr7", unsafe.Offsetof(d.DR7), 24},
		{"kvm_run.internal.data", unsafe.Offsetof(ie.Data), 8},
		{"kvm_run.kvm_valid_regs", runValidRegsOffset, 288},
		{"kvm_run.s", runSyncRegsOffset, 304},
	} {
		if c.got != c.want {
			t.Errorf("offsetof(%s) = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestIoctlNumbers checks the request numbers built from the _IO/_IOR/_IOW
// macros against the values the C headers expand to.
func TestIoctlNumbers(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", kvmGetAPIVersion, 0xAE00},
		{"KVM_CREATE_VM", kvmCreateVM, 0xAE01},
		{"KVM_GET_MSR_INDEX_LIST", kvmGetMSRIndexList, 0xC004AE02},
		{"KVM_CHECK_EXTENSION", kvmCheckExtension, 0xAE03},
		{"KVM_GET_VCPU_MMAP_SIZE", kvmGetVCPUMmapSize, 0xAE04},
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID, 0xC008AE05},
		{"KVM_CREATE_VCPU", kvmCreateVCPU, 0xAE41},
		{"KVM_GET_DIRTY_LOG", kvmGetDirtyLog, 0x4010AE42},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion, 0x4020AE46},
		{"KVM_SET_TSS_ADDR", kvmSetTSSAddr, 0xAE47},
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr, 0x4008AE48},
		{"KVM_RUN", kvmRun, 0xAE80},
		{"KVM_GET_REGS", kvmGetRegs, 0x8090AE81},
		{"KVM_SET_REGS", kvmSetRegs, 0x4090AE82},
		{"KVM_GET_SREGS", kvmGetSregs, 0x8138AE83},
		{"KVM_SET_SREGS", kvmSetSregs, 0x4138AE84},
		{"KVM_INTERRUPT", kvmInterrupt, 0x4004AE86},
		{"KVM_GET_MSRS", kvmGetMSRs, 0xC008AE88},
		{"KVM_SET_MSRS", kvmSetMSRs, 0x4008AE89},
		{"KVM_GET_FPU", kvmGetFPU, 0x81A0AE8C},
		{"KVM_SET_FPU", kvmSetFPU, 0x41A0AE8D},
		{"KVM_SET_CPUID2", kvmSetCPUID2, 0x4008AE90},
		{"KVM_GET_CPUID2", kvmGetCPUID2, 0xC008AE91},
		{"KVM_SET_GUEST_DEBUG", kvmSetGuestDebug, 0x4048AE9B},
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents, 0x8040AE9F},
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents, 0x4040AEA0},
		{"KVM_GET_DEBUGREGS", kvmGetDebugRegs, 0x8080AEA1},
		{"KVM_SET_DEBUGREGS", kvmSetDebugRegs, 0x4080AEA2},
		{"KVM_GET_XSAVE", kvmGetXSave, 0x9000AEA4},
		{"KVM_SET_XSAVE", kvmSetXSave, 0x5000AEA5},
		{"KVM_GET_XCRS", kvmGetXCRs, 0x8188AEA6},
		{"KVM_SET_XCRS", kvmSetXCRs, 0x4188AEA7},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// TestRunBits pins the bit positions used for the atomic updates of
// kvm_run's first word to the byte offsets of the fields.
func TestRunBits(t *testing.T) {
	var h runHeader
	if got := uintptr(1) << (8 * unsafe.Offsetof(h.RequestInterruptWindow)); got != requestIRQWindowBit {
		t.Errorf("requestIRQWindowBit = %#x, want %#x", requestIRQWindowBit, got)
	}
	if got := uintptr(1) << (8 * unsafe.Offsetof(h.ImmediateExit)); got != immediateExitBit {
		t.Errorf("immediateExitBit = %#x, want %#x", immediateExitBit, got)
	}
}

// TestRunPageStateFields checks the kvm_run accessors a checkpoint restore
// uses land on the right bytes.
func TestRunPageStateFields(t *testing.T) {
	run := make([]byte, runMinSize)
	v := newVCPU(-1, 0, run)
	v.SetRunCR8(0x0f)
	if run[16] != 0x0f {
		t.Errorf("SetRunCR8 wrote kvm_run bytes 16..23 = % x, want 0f 00 ...", run[16:24])
	}
	run[8] = byte(ExitIO)
	if k := v.LastExitKind(); k != ExitIO {
		t.Errorf("LastExitKind = %v, want IO", k)
	}
	if v.ImmediateExit() {
		t.Error("ImmediateExit on a zero page")
	}
	v.SetImmediateExit(true)
	if !v.ImmediateExit() || run[1] != 1 {
		t.Errorf("after SetImmediateExit(true): ImmediateExit=%v, byte 1 = %d", v.ImmediateExit(), run[1])
	}
}
