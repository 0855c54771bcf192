//go:build linux && amd64

package kvm

import (
	"strconv"
	"unsafe"
)

// ExitKind says why Run returned. Its values are the kernel's KVM_EXIT_*
// reasons, so a kind nobody decodes yet still prints as its number.
type ExitKind uint32

// Exit kinds (KVM_EXIT_*). Only the x86 ones a VMM without an in-kernel
// irqchip can meet are spelled out.
const (
	ExitUnknown       ExitKind = 0
	ExitException     ExitKind = 1
	ExitIO            ExitKind = 2
	ExitHypercall     ExitKind = 3
	ExitDebug         ExitKind = 4
	ExitHLT           ExitKind = 5
	ExitMMIO          ExitKind = 6
	ExitIRQWindowOpen ExitKind = 7
	ExitShutdown      ExitKind = 8
	ExitFailEntry     ExitKind = 9
	// ExitInterrupted is KVM_EXIT_INTR: KVM_RUN returned EINTR because a
	// signal (a kick) was pending or immediate_exit was set. The guest did
	// not cause it, so under the determinism contract nothing may be
	// injected or counted at it.
	ExitInterrupted   ExitKind = 10
	ExitSetTPR        ExitKind = 11
	ExitTPRAccess     ExitKind = 12
	ExitNMI           ExitKind = 16
	ExitInternalError ExitKind = 17
	ExitSystemEvent   ExitKind = 24
	ExitIOAPICEOI     ExitKind = 26
	ExitHyperV        ExitKind = 27
	ExitX86RDMSR      ExitKind = 29
	ExitX86WRMSR      ExitKind = 30
	ExitDirtyRingFull ExitKind = 31
	ExitX86BusLock    ExitKind = 33
	ExitNotify        ExitKind = 37
	ExitMemoryFault   ExitKind = 39
)

// String returns the kernel's name for the kind without the KVM_EXIT_ prefix.
func (k ExitKind) String() string {
	switch k {
	case ExitUnknown:
		return "UNKNOWN"
	case ExitException:
		return "EXCEPTION"
	case ExitIO:
		return "IO"
	case ExitHypercall:
		return "HYPERCALL"
	case ExitDebug:
		return "DEBUG"
	case ExitHLT:
		return "HLT"
	case ExitMMIO:
		return "MMIO"
	case ExitIRQWindowOpen:
		return "IRQ_WINDOW_OPEN"
	case ExitShutdown:
		return "SHUTDOWN"
	case ExitFailEntry:
		return "FAIL_ENTRY"
	case ExitInterrupted:
		return "INTR"
	case ExitSetTPR:
		return "SET_TPR"
	case ExitTPRAccess:
		return "TPR_ACCESS"
	case ExitNMI:
		return "NMI"
	case ExitInternalError:
		return "INTERNAL_ERROR"
	case ExitSystemEvent:
		return "SYSTEM_EVENT"
	case ExitIOAPICEOI:
		return "IOAPIC_EOI"
	case ExitHyperV:
		return "HYPERV"
	case ExitX86RDMSR:
		return "X86_RDMSR"
	case ExitX86WRMSR:
		return "X86_WRMSR"
	case ExitDirtyRingFull:
		return "DIRTY_RING_FULL"
	case ExitX86BusLock:
		return "X86_BUS_LOCK"
	case ExitNotify:
		return "NOTIFY"
	case ExitMemoryFault:
		return "MEMORY_FAULT"
	}
	return "ExitKind(" + strconv.FormatUint(uint64(k), 10) + ")"
}

// Exit is one decoded VM exit. Only the member named by Kind is filled in;
// the others are zero. The slices alias the vCPU's kvm_run page and are valid
// until the next Run.
type Exit struct {
	Kind ExitKind

	IO          IOExit            // ExitIO
	MMIO        MMIOExit          // ExitMMIO
	Debug       DebugExit         // ExitDebug
	Exception   ExceptionExit     // ExitException
	FailEntry   FailEntryExit     // ExitFailEntry
	Internal    InternalErrorExit // ExitInternalError
	SystemEvent SystemEventExit   // ExitSystemEvent

	// HardwareExitReason is the vendor exit code of an ExitUnknown.
	HardwareExitReason uint64
}

// kvm_run.io.direction values (KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT).
const (
	ioDirIn  = 0
	ioDirOut = 1
)

// IOExit is a port I/O access the guest made (IN/OUT, or INS/OUTS with
// Count > 1).
//
// At this exit the guest's RIP still points at the I/O instruction on
// current kernels (older ones, and port 0x7e today, advance it first): KVM
// finishes the instruction and moves RIP past it on the next Run. Code that
// records RIP at exits must read it the same way on primary and backup.
type IOExit struct {
	Port  uint16
	Size  uint8 // bytes per access: 1, 2 or 4
	In    bool
	Count uint32
	// Data holds Size*Count bytes inside the kvm_run page. For OUT it holds
	// what the guest wrote; for IN the handler writes the result into it
	// before the next Run, which KVM then completes the instruction with.
	Data []byte
}

// MMIOExit is a guest access to a physical address no memory slot backs (or
// a write to a read-only slot).
type MMIOExit struct {
	Addr    uint64
	IsWrite bool
	// Data has Len (at most 8) bytes inside the kvm_run page: the written
	// value, or where a read's result must be stored before the next Run.
	Data []byte
}

// DebugExit is a single-step or breakpoint stop (KVM_SET_GUEST_DEBUG).
type DebugExit struct {
	Exception uint32 // 1 for #DB, 3 for #BP
	PC        uint64
	DR6, DR7  uint64
}

// ExceptionExit is an exception KVM handed to userspace.
type ExceptionExit struct {
	Exception, ErrorCode uint32
}

// FailEntryExit says why the hardware refused to enter the guest (invalid
// guest state, typically bad segment or control registers).
type FailEntryExit struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
}

// Internal-error subcodes (KVM_INTERNAL_ERROR_*).
const (
	InternalErrorEmulation            = 1
	InternalErrorSimultaneousEx       = 2
	InternalErrorDeliveryEvent        = 3
	InternalErrorUnexpectedExitReason = 4
)

// InternalErrorExit is KVM giving up on the guest, most often because its
// instruction emulator met an instruction it cannot emulate.
type InternalErrorExit struct {
	Suberror uint32
	// Data aliases the kernel's diagnostic words in the kvm_run page.
	Data []uint64
}

// System-event types (KVM_SYSTEM_EVENT_*).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
	SystemEventWakeup   = 4
	SystemEventSuspend  = 5
	SystemEventSEVTerm  = 6
)

// SystemEventExit is a guest-initiated shutdown, reset or crash report.
type SystemEventExit struct {
	Type uint32
	// Data aliases the event's words in the kvm_run page (data[0] is the
	// flags word of older kernels).
	Data []uint64
}

// decodeExit reads the exit the kernel left in run, a whole kvm_run mapping.
// It must not allocate: it runs once per exit.
func decodeExit(run []byte) Exit {
	h := (*runHeader)(unsafe.Pointer(&run[0]))
	e := Exit{Kind: ExitKind(h.ExitReason)}
	u := unsafe.Pointer(&run[runExitUnionOffset])
	switch e.Kind {
	case ExitIO:
		io := (*runIO)(u)
		e.IO = IOExit{Port: io.Port, Size: io.Size, In: io.Direction == ioDirIn, Count: io.Count}
		n := uint64(io.Size) * uint64(io.Count)
		if off := io.DataOffset; off <= uint64(len(run)) && n <= uint64(len(run))-off {
			e.IO.Data = run[off : off+n : off+n]
		}
	case ExitMMIO:
		m := (*runMMIO)(u)
		n := min(m.Len, 8)
		const dataOff = runExitUnionOffset + 8
		e.MMIO = MMIOExit{Addr: m.PhysAddr, IsWrite: m.IsWrite != 0, Data: run[dataOff : dataOff+n : dataOff+n]}
	case ExitDebug:
		d := (*runDebug)(u)
		e.Debug = DebugExit{Exception: d.Exception, PC: d.PC, DR6: d.DR6, DR7: d.DR7}
	case ExitException:
		x := (*runException)(u)
		e.Exception = ExceptionExit{Exception: x.Exception, ErrorCode: x.ErrorCode}
	case ExitFailEntry:
		f := (*runFailEntry)(u)
		e.FailEntry = FailEntryExit{HardwareEntryFailureReason: f.HardwareEntryFailureReason, CPU: f.CPU}
	case ExitInternalError:
		ie := (*runInternal)(u)
		e.Internal = InternalErrorExit{Suberror: ie.Suberror, Data: ie.Data[:min(ie.NData, 16)]}
	case ExitSystemEvent:
		se := (*runSystemEvent)(u)
		e.SystemEvent = SystemEventExit{Type: se.Type, Data: se.Data[:min(se.NData, 16)]}
	case ExitUnknown:
		e.HardwareExitReason = *(*uint64)(u)
	}
	return e
}
