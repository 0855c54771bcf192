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
		{"KVM_SET_GUEST_DEBUG", kvmSetGuestDebug, 0x4048AE9B},
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents, 0x8040AE9F},
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents, 0x4040AEA0},
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
