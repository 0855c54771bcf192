// Package cpuid owns the CPUID the guest sees: the determinism contract's
// view of the host CPU (DESIGN.md rule 3). Every feature whose use would
// let the guest observe time, randomness or host topology without a VM exit
// the VMM can log is hidden, as is every feature the nested KVM host cannot
// run reliably (XSAVE and the AVX family that depends on it).
package cpuid

import "github.com/ftvm/ftvm/hypervisor/kvm"

// reg names a CPUID output register.
type reg int

const (
	eax reg = iota
	ebx
	ecx
	edx
)

// anyIndex matches every subleaf of a leaf.
const anyIndex = ^uint32(0)

// clearRule hides feature bits: mask is cleared in reg of leaf/index.
type clearRule struct {
	leaf, index uint32
	reg         reg
	mask        uint32
}

// Leaf 1 feature bits.
const (
	l1ecxMonitor     = 1 << 3  // MONITOR/MWAIT
	l1ecxVMX         = 1 << 5  // nested virtualization
	l1ecxSMX         = 1 << 6  // TXT
	l1ecxEIST        = 1 << 7  // SpeedStep: host frequency control
	l1ecxTM2         = 1 << 8  // thermal monitor 2
	l1ecxFMA         = 1 << 12 // AVX-encoded
	l1ecxPDCM        = 1 << 15 // perf capabilities MSR
	l1ecxPCID        = 1 << 17
	l1ecxDCA         = 1 << 18
	l1ecxX2APIC      = 1 << 21
	l1ecxTSCDeadline = 1 << 24
	l1ecxXSAVE       = 1 << 26
	l1ecxOSXSAVE     = 1 << 27
	l1ecxAVX         = 1 << 28
	l1ecxF16C        = 1 << 29 // AVX-encoded
	l1ecxRDRAND      = 1 << 30
	l1ecxHypervisor  = 1 << 31

	l1edxTSC  = 1 << 4
	l1edxAPIC = 1 << 9
	l1edxACPI = 1 << 22 // thermal monitor and clock control MSRs
	l1edxHTT  = 1 << 28 // more than one logical processor
	l1edxTM   = 1 << 29
)

// hideRules lists every feature bit the guest must not see, with why.
func hideRules() []clearRule {
	return []clearRule{
		// Leaf 1 ECX.
		// MONITOR/MWAIT: an MWAIT wakes on a host memory write with no exit;
		// the guest idles with HLT, which the VMM sees.
		{1, anyIndex, ecx, l1ecxMonitor},
		// VMX/SMX: no nested virtualization or TXT inside a replicated VM.
		{1, anyIndex, ecx, l1ecxVMX | l1ecxSMX},
		// EIST, TM2, DCA, PDCM: host power, thermal, cache-injection and PMU
		// capabilities that the VM does not have (no PMU on these hosts).
		{1, anyIndex, ecx, l1ecxEIST | l1ecxTM2 | l1ecxDCA | l1ecxPDCM},
		// PCID: optional for correctness; hidden so checkpoints move between
		// hosts with and without it and the nested host emulates less.
		{1, anyIndex, ecx, l1ecxPCID},
		// x2APIC, TSC-deadline: there is no local APIC (no in-kernel irqchip);
		// the TSC-deadline timer would also be a clock the VMM cannot log.
		{1, anyIndex, ecx, l1ecxX2APIC | l1ecxTSCDeadline},
		// XSAVE/OSXSAVE: the nested host's KVM cannot run XRSTOR reliably
		// (ENVIRONMENT.md), so the guest must use FXSAVE. AVX, FMA and F16C
		// keep state only XSAVE can save, so they go with it.
		{1, anyIndex, ecx, l1ecxXSAVE | l1ecxOSXSAVE | l1ecxAVX | l1ecxFMA | l1ecxF16C},
		// RDRAND: randomness the VMM could not log.
		{1, anyIndex, ecx, l1ecxRDRAND},

		// Leaf 1 EDX.
		// TSC: a clock read without an exit (DESIGN.md rule 3). Linux then
		// never uses RDTSC for time and picks the ACPI PM timer.
		{1, anyIndex, edx, l1edxTSC},
		// APIC: no local APIC exists; Linux uses the 8259 PIC.
		{1, anyIndex, edx, l1edxAPIC},
		// ACPI (thermal MSRs), TM: host thermal control.
		{1, anyIndex, edx, l1edxACPI | l1edxTM},
		// HTT: one logical processor per package.
		{1, anyIndex, edx, l1edxHTT},

		// Leaf 7 subleaf 0 EBX.
		// TSC_ADJUST (1): TSC MSR. SGX (2): enclaves. HLE (4), RTM (11): TSX
		// transactions abort on host events, a non-deterministic branch.
		// AVX2 (5), AVX-512 (16,17,21,26,27,28,30,31): XSAVE state. INVPCID
		// (10): goes with PCID. PQM (12), PQE (15): host cache monitoring.
		// MPX (14): XSAVE state. RDSEED (18): randomness. Intel PT (25):
		// tracing that needs XSAVES and exposes timing.
		{7, 0, ebx, 1<<1 | 1<<2 | 1<<4 | 1<<5 | 1<<10 | 1<<11 | 1<<12 | 1<<14 | 1<<15 |
			1<<16 | 1<<17 | 1<<18 | 1<<21 | 1<<25 | 1<<26 | 1<<27 | 1<<28 | 1<<30 | 1<<31},
		// Leaf 7 subleaf 0 ECX.
		// AVX512_VBMI (1), VBMI2 (6), VAES (9), VPCLMULQDQ (10), AVX512 VNNI,
		// BITALG, VPOPCNTDQ (11,12,14): XSAVE state. PKU/OSPKE (3,4): PKRU
		// is XSAVE state. WAITPKG (5): UMWAIT/TPAUSE wait on the TSC. RDPID
		// (22): reads TSC_AUX, a host-provided value, like RDTSCP. SGX_LC (30).
		{7, 0, ecx, 1<<1 | 1<<3 | 1<<4 | 1<<5 | 1<<6 | 1<<9 | 1<<10 | 1<<11 | 1<<12 | 1<<14 | 1<<22 | 1<<30},
		// Leaf 7 subleaf 0 EDX.
		// AVX512_4VNNIW/4FMAPS (2,3), VP2INTERSECT (8), AVX512_FP16 (23),
		// AMX (22,24,25): XSAVE state. Hybrid (15): host core types.
		// TSXLDTRK (16): TSX. Arch LBR (19): branch recording (PMU-like).
		{7, 0, edx, 1<<2 | 1<<3 | 1<<8 | 1<<15 | 1<<16 | 1<<19 | 1<<22 | 1<<23 | 1<<24 | 1<<25},
		// Leaf 7 subleaf 1 EAX: AVX-VNNI (4), AVX512_BF16 (5): XSAVE state.
		{7, 1, eax, 1<<4 | 1<<5},

		// Leaf 0x80000001 ECX.
		// CMP_LEGACY (1): multi-core. SVM (2): nested virtualization. ExtAPIC
		// (3): APIC. IBS (10): sampling PMU. XOP (11), FMA4 (16): AVX-encoded.
		// SKINIT (12), WDT (13). LWP (15): XSAVE state. TOPOEXT (22): host
		// topology. PerfCtr core/NB/LLC (23,24,28): PMU. PTSC (27): a TSC.
		// MWAITX (29): timed wait on the TSC.
		{0x80000001, anyIndex, ecx, 1<<1 | 1<<2 | 1<<3 | 1<<10 | 1<<11 | 1<<12 | 1<<13 | 1<<15 | 1<<16 |
			1<<22 | 1<<23 | 1<<24 | 1<<27 | 1<<28 | 1<<29},
		// Leaf 0x80000001 EDX: AMD mirrors TSC (4) and APIC (9) here; RDTSCP
		// (27) reads the TSC.
		{0x80000001, anyIndex, edx, 1<<4 | 1<<9 | 1<<27},

		// Leaf 0x80000007 EDX: advanced power management, including the
		// invariant TSC (8); all of it describes host power and thermal
		// hardware the VM does not have.
		{0x80000007, anyIndex, edx, ^uint32(0)},
	}
}

// zeroedLeaf reports leaves whose content would describe features the
// guest must not use; such a leaf is kept (the max-leaf values stay valid)
// with all registers zero.
func zeroedLeaf(fn uint32) bool {
	switch fn {
	case 0x5: // MONITOR/MWAIT parameters: MWAIT is hidden
		return true
	case 0x6: // thermal and power management: host hardware the VM lacks
		return true
	case 0xa: // architectural PMU: there is no PMU, and counters would be non-deterministic
		return true
	case 0xd: // XSAVE state components: XSAVE is hidden
		return true
	case 0xf: // cache QoS monitoring: host hardware
		return true
	case 0x10: // cache allocation: host hardware
		return true
	case 0x12: // SGX: hidden
		return true
	case 0x14: // Intel PT: hidden
		return true
	case 0x15: // TSC/crystal clock ratio: the TSC is hidden
		return true
	case 0x16: // processor frequency: host clock speeds
		return true
	case 0x19: // Key Locker
		return true
	case 0x1a: // hybrid core type: host topology
		return true
	case 0x1d: // AMX tiles: XSAVE state
		return true
	case 0x1e: // AMX TMUL: XSAVE state
		return true
	case 0x8000000a: // SVM features: SVM is hidden
		return true
	case 0x8000001e: // AMD extended APIC ID/topology: TOPOEXT and the APIC are hidden
		return true
	}
	return false
}

// PV leaves: KVM's (and any hypervisor's) paravirtual interface.
const (
	pvLeafFirst = 0x40000000
	pvLeafLast  = 0x400000ff
)

// Policy returns the CPUID table to set on the guest's vCPU, derived from
// what KVM supports (KVM_GET_SUPPORTED_CPUID). It does not modify
// supported.
func Policy(supported []kvm.CPUIDEntry2) []kvm.CPUIDEntry2 {
	rules := hideRules()
	out := make([]kvm.CPUIDEntry2, 0, len(supported))
	for _, e := range supported {
		// The KVM PV leaves go entirely: kvmclock would be a clock read
		// without an exit, PV EOI and async page faults inject events
		// the VMM does not control, steal time reflects the host.
		if e.Function >= pvLeafFirst && e.Function <= pvLeafLast {
			continue
		}
		if zeroedLeaf(e.Function) {
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		}
		for _, r := range rules {
			if r.leaf == e.Function && (r.index == anyIndex || r.index == e.Index) {
				*field(&e, r.reg) &^= r.mask
			}
		}
		switch e.Function {
		case 1:
			// Hypervisor bit set: the guest knows it is virtualized
			// and, e.g., does not trust its own delay calibration.
			e.ECX |= l1ecxHypervisor
			// EBX[31:24] initial APIC ID 0, EBX[23:16] one logical
			// processor; CLFLUSH size and brand index kept.
			e.EBX = e.EBX&0x0000ffff | 1<<16
		case 4:
			// Deterministic cache parameters: EAX[31:26] cores per
			// package - 1 and EAX[25:14] threads sharing the cache - 1
			// are 0 for a single CPU.
			e.EAX &= 0x00003fff
		case 0xb, 0x1f:
			e = singleCPUTopology(e)
		case 0x80000008:
			// ECX[7:0] cores - 1 and ECX[15:12] APIC ID size: one CPU.
			e.ECX &^= 0x0000f0ff
		case 0x8000001d:
			// AMD cache topology: EAX[25:14] sharing threads - 1 = 0.
			e.EAX &= 0x00003fff
		}
		out = append(out, e)
	}
	return out
}

// singleCPUTopology rewrites an extended topology subleaf (0xB / 0x1F) for
// one thread in one core: level 0 is SMT, level 1 core, each with one
// logical processor and a zero x2APIC ID shift; higher levels are invalid.
func singleCPUTopology(e kvm.CPUIDEntry2) kvm.CPUIDEntry2 {
	e.EAX, e.EBX, e.EDX = 0, 0, 0
	e.ECX = e.Index & 0xff
	switch e.Index {
	case 0:
		e.EBX = 1
		e.ECX |= 1 << 8 // SMT
	case 1:
		e.EBX = 1
		e.ECX |= 2 << 8 // core
	}
	return e
}

func field(e *kvm.CPUIDEntry2, r reg) *uint32 {
	switch r {
	case eax:
		return &e.EAX
	case ebx:
		return &e.EBX
	case ecx:
		return &e.ECX
	default:
		return &e.EDX
	}
}
