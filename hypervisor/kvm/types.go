//go:build linux && amd64

package kvm

// The structures below mirror include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h field for field; Go lays out these
// fixed-size fields exactly as the C ABI does on amd64, which layout_test.go
// verifies size by size and offset by offset.

// Regs is struct kvm_regs: the general-purpose registers, RIP and RFLAGS.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment is struct kvm_segment: a segment register with its hidden
// descriptor cache, which is what the CPU actually uses.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable: the GDTR or IDTR.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs: segment, descriptor-table and control
// registers. InterruptBitmap has one bit per vector of a pending external
// interrupt that KVM has accepted but not yet delivered.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu: the legacy x87/SSE state (the FXSAVE subset).
// KVM_GET_FPU/KVM_SET_FPU leave MXCSR out (it reads back as 0 on the 6.1
// kernels we test on), so a complete snapshot needs KVM_GET_XSAVE as well.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// msrsHeader is the fixed part of struct kvm_msrs; the entries follow it.
type msrsHeader struct {
	NMSRs uint32
	_     uint32
}

// CPUIDEntry2 is struct kvm_cpuid_entry2: one CPUID leaf/subleaf and the
// registers the guest sees for it.
type CPUIDEntry2 struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDFlagSignificantIndex marks an entry whose Index (ECX subleaf) selects
// it (KVM_CPUID_FLAG_SIGNIFCANT_INDEX, sic).
const CPUIDFlagSignificantIndex = 1 << 0

// cpuid2Header is the fixed part of struct kvm_cpuid2.
type cpuid2Header struct {
	NEnt uint32
	_    uint32
}

// userspaceMemoryRegion is struct kvm_userspace_memory_region.
type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// Memory region flags for SetUserMemoryRegion.
const (
	// MemLogDirtyPages turns on dirty-page tracking for the slot
	// (KVM_MEM_LOG_DIRTY_PAGES); read it with GetDirtyLog.
	MemLogDirtyPages = 1 << 0
	// MemReadonly makes guest writes to the slot exit as MMIO
	// (KVM_MEM_READONLY).
	MemReadonly = 1 << 1
)

// dirtyLog is struct kvm_dirty_log; Bitmap is a user pointer the kernel
// fills with one bit per page of the slot.
type dirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uint64
}

// interrupt is struct kvm_interrupt.
type interrupt struct {
	IRQ uint32
}

// guestDebug is struct kvm_guest_debug with its x86 arch part (debugreg[8]).
type guestDebug struct {
	Control  uint32
	_        uint32
	DebugReg [8]uint64
}

// Guest-debug control bits (KVM_GUESTDBG_*).
const (
	guestDbgEnable     = 1 << 0
	guestDbgSingleStep = 1 << 1
)

// VCPUEvents is struct kvm_vcpu_events: pending and injected exceptions,
// interrupts and NMIs and the interrupt shadow, which a snapshot must carry
// for the restored vCPU to resume on the same path.
type VCPUEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		_        uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFault struct {
		Pending uint8
	}
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// XSaveSize is the size of struct kvm_xsave, the buffer KVM_GET_XSAVE fills.
const XSaveSize = 4096

// XSave is struct kvm_xsave: the guest's x87, SSE and any enabled XSAVE
// components, in the standard (non-compacted) XSAVE layout: the legacy
// FXSAVE area at 0 (MXCSR at 24), the XSAVE header at 512 (XSTATE_BV is its
// first quadword), the components at the offsets of the host's CPUID leaf
// 0xD. Unlike KVM_GET_FPU it includes MXCSR.
//
// KVM fills only the components enabled for the guest (x87 and SSE
// always). A guest whose XSAVE state outgrows 4096 bytes (AMX, which needs
// arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM) that ftvm never asks for) would need
// KVM_GET_XSAVE2; KVM_GET_XSAVE then fails with EINVAL.
type XSave struct {
	Region [XSaveSize / 4]uint32
}

// MaxXCRs is KVM_MAX_XCRS, the capacity of XCRs.
const MaxXCRs = 16

// XCR is struct kvm_xcr: one extended control register.
type XCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

// XCRs is struct kvm_xcrs. KVM knows only XCR0 (XFEATURE_ENABLED_MASK) and
// reports NrXCRs 0 on a host without XSAVE.
type XCRs struct {
	NrXCRs uint32
	Flags  uint32
	XCRs   [MaxXCRs]XCR
	_      [16]uint64
}

// DebugRegs is struct kvm_debugregs: DR0-DR3, DR6 and DR7. Flags must be 0
// when set.
type DebugRegs struct {
	DB    [4]uint64
	DR6   uint64
	DR7   uint64
	Flags uint64
	_     [9]uint64
}

// msrListHeader is the fixed part of struct kvm_msr_list; the indices
// follow it.
type msrListHeader struct {
	NMSRs uint32
}

// runHeader is the fixed head of struct kvm_run, up to the exit union at
// offset 32. Decoding reads these fields through a pointer into the mmap'd
// page, which is page-aligned, so the loads are aligned.
type runHeader struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IFFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
}

// Offsets of the exit union and of the fields after it in struct kvm_run.
const (
	runExitUnionOffset = 32
	runExitUnionSize   = 256
	runValidRegsOffset = runExitUnionOffset + runExitUnionSize // kvm_valid_regs
	runDirtyRegsOffset = runValidRegsOffset + 8                // kvm_dirty_regs
	runSyncRegsOffset  = runDirtyRegsOffset + 8                // s.regs
	runSyncRegsSize    = 2048
	// runMinSize is the smallest kvm_run KVM_GET_VCPU_MMAP_SIZE may report;
	// decoding never reads past it except through io.data_offset, which is
	// bounds-checked against the real mapping.
	runMinSize = runSyncRegsOffset + runSyncRegsSize
)

// The members of the exit union that Run decodes.

type runIO struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64
}

type runMMIO struct {
	PhysAddr uint64
	Data     [8]uint8
	Len      uint32
	IsWrite  uint8
}

type runFailEntry struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
}

type runException struct {
	Exception uint32
	ErrorCode uint32
}

type runDebug struct {
	Exception uint32
	_         uint32
	PC        uint64
	DR6       uint64
	DR7       uint64
}

type runInternal struct {
	Suberror uint32
	NData    uint32
	Data     [16]uint64
}

type runSystemEvent struct {
	Type  uint32
	NData uint32
	Data  [16]uint64
}
