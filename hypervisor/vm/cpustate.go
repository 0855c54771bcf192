package vm

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// CPUState is everything KVM keeps for the VM's one vCPU that a backup must
// load to continue exactly where the primary is (DESIGN.md, "Checkpoints";
// the resync after a kick of rule 5). With no in-kernel irqchip there is no
// local APIC, PIC, PIT or multiprocessing state in KVM to carry: those live
// in the VMM's device models.
//
// The MSRs carried (checkpointMSRs): always SYSENTER_CS/ESP/EIP, PAT,
// STAR, LSTAR, CSTAR, SFMASK and KERNEL_GS_BASE; FEATURE_CONTROL,
// SPEC_CTRL, MISC_FEATURES_ENABLES, MISC_ENABLE, XFD, XFD_ERR, POWER_CTL,
// MCG_EXT_CTL, AMD HWCR and VIRT_SPEC_CTRL where KVM lists them; the MTRRs
// (MTRRdefType, the fixed ranges, the variable pairs MTRRcap counts) if the
// guest's CPUID has MTRR; MCG_STATUS if it has MCE; and MCG_CTL and every
// machine-check bank MCG_CAP announces (CTL, STATUS, ADDR, MISC; CTL2 with
// CMCI) if it has MCA: all state a guest writes and reads back. EFER,
// FS_BASE, GS_BASE and APIC_BASE travel in Sregs.
//
// Not carried, on purpose:
//   - the TSC and the MSRs tied to it (IA32_TSC, TSC_ADJUST, TSC_DEADLINE,
//     TSC_AUX): the CPUID policy hides the TSC, RDTSCP and RDPID, so the
//     guest never reads them, and each host's TSC is its own;
//   - kvmclock, async page faults, steal time, PV EOI and Hyper-V MSRs:
//     the KVM PV leaves are hidden;
//   - PMU, Intel PT, LBR, MPX, SGX and UMWAIT MSRs, and nested
//     virtualization state (KVM_GET_NESTED_STATE, VM_HSAVE_PA, VMX
//     capabilities): the features are hidden;
//   - read-only feature MSRs (ARCH_CAPABILITIES, PERF_CAPABILITIES,
//     PLATFORM_INFO, UCODE_REV, MTRRcap, MCG_CAP): configuration a backup
//     built from the same Config on the same kind of host already has;
//   - SMM state beyond what Events reports: the machine has no SMM;
//   - the PAE page-directory pointers (KVM_GET_SREGS2): a 32-bit PAE guest
//     that rewrote its PDPT without reloading CR3 would resume with the
//     reloaded ones; 64-bit guests do not have the cache;
//   - a pending PIO/MMIO completion: CaptureCPU completes it first (see
//     there), because KVM keeps it where userspace cannot read it.
type CPUState struct {
	Regs  kvm.Regs
	Sregs kvm.Sregs

	// HasXSave says which of XSave (KVM_GET_XSAVE: x87, SSE, MXCSR and
	// any enabled extended component) and FPU (KVM_GET_FPU, on a host
	// without KVM_CAP_XSAVE; it lacks MXCSR) holds the floating-point
	// state; the other is zero.
	HasXSave bool
	XSave    kvm.XSave
	FPU      kvm.FPU

	// XCRs are the extended control registers (XCR0), none on a host
	// without XSAVE. At most kvm.MaxXCRs, by ascending XCR number.
	XCRs []kvm.XCR

	// Events are the pending and injected exception, interrupt and NMI,
	// the interrupt shadow (STI, MOV SS) and the SMM flags.
	Events kvm.VCPUEvents

	// Debug holds DR0-DR3, DR6 and DR7; its Flags are always 0.
	Debug kvm.DebugRegs

	// MSRs are the model-specific registers a guest can change and
	// observe (see checkpointMSRs), by ascending index, at most
	// MaxCPUStateMSRs. EFER, FS_BASE, GS_BASE and APIC_BASE are in Sregs.
	MSRs []kvm.MSREntry
}

// CaptureCPU reads the vCPU's complete state into st.
//
// Call it only while the vCPU is not in KVM_RUN: between exits on the vCPU
// goroutine (from a Recorder method), or after Run has returned.
//
// If the last exit was a port or MMIO access, KVM has not finished the
// instruction yet: it does so on the next KVM_RUN, with the data the VMM
// left in kvm_run, and keeps that pending step where no ioctl can read it.
// CaptureCPU therefore first enters KVM_RUN with immediate_exit set, which
// completes the instruction (RIP moves past it, an IN's value lands in the
// register) and returns without running guest code. That is invisible to
// the guest, but it refreshes kvm_run's ready_for_interrupt_injection and
// if_flag, which the exit loop reads to decide whether to inject: a primary
// and a backup must call CaptureCPU (or RestoreCPU) at the same exits, or
// neither. A kick that lands during that entry is absorbed by it (the
// loop checks its context before the next KVM_RUN; the watchdog kicks
// again); one already pending before stays pending.
func (v *VM) CaptureCPU(st *CPUState) error {
	if err := v.captureCPU(st); err != nil {
		return fmt.Errorf("capture vCPU state: %w", err)
	}
	return nil
}

func (v *VM) captureCPU(st *CPUState) error {
	if err := v.completeLastExit(); err != nil {
		return err
	}
	var s CPUState
	if err := v.vcpu.GetRegs(&s.Regs); err != nil {
		return err
	}
	if err := v.vcpu.GetSregs(&s.Sregs); err != nil {
		return err
	}
	hasXSave, hasXCRs, err := v.fpCaps()
	if err != nil {
		return err
	}
	if hasXSave {
		s.HasXSave = true
		if err := v.vcpu.GetXSave(&s.XSave); err != nil {
			return err
		}
	} else if err := v.vcpu.GetFPU(&s.FPU); err != nil {
		return err
	}
	if hasXCRs {
		var x kvm.XCRs
		if err := v.vcpu.GetXCRs(&x); err != nil {
			return err
		}
		if x.NrXCRs > kvm.MaxXCRs {
			return fmt.Errorf("KVM_GET_XCRS reported %d registers, at most %d exist", x.NrXCRs, kvm.MaxXCRs)
		}
		s.XCRs = slices.Clone(x.XCRs[:x.NrXCRs])
		slices.SortFunc(s.XCRs, func(a, b kvm.XCR) int { return cmp.Compare(a.XCR, b.XCR) })
	}
	if err := v.vcpu.GetVCPUEvents(&s.Events); err != nil {
		return err
	}
	if err := v.vcpu.GetDebugRegs(&s.Debug); err != nil {
		return err
	}
	s.Debug.Flags = 0
	idx, err := v.checkpointMSRs()
	if err != nil {
		return err
	}
	s.MSRs = make([]kvm.MSREntry, len(idx))
	for i, m := range idx {
		s.MSRs[i].Index = m
	}
	if err := v.vcpu.GetMSRs(s.MSRs); err != nil {
		return err
	}
	if err := s.validate(); err != nil {
		return fmt.Errorf("KVM reported a state the encoding cannot carry: %w", err)
	}
	*st = s
	return nil
}

// RestoreCPU loads st into the vCPU, replacing all of its state: a backup
// then continues exactly where the primary was when it captured st. The VM
// must have been created from the same Config (CPUID, memory size) on the
// same kind of host; guest memory and device state are loaded separately.
//
// Call it only while the vCPU is not in KVM_RUN (see CaptureCPU). Like
// CaptureCPU it first completes the instruction of the vCPU's own last
// exit, if one is pending, so that the next KVM_RUN does not complete it
// on top of the loaded state.
//
// The order follows KVM's dependencies: special registers first (CR0,
// CR4, EFER set the mode the rest is checked against, and the interrupt
// bitmap in them queues an interrupt); then the MSRs; then the general
// registers; XCR0 before the XSAVE image whose components it enables; the
// debug registers; the events last, because KVM_SET_REGS drops a pending
// exception and KVM_SET_SREGS requeues the interrupt the events describe.
// Finally kvm_run.cr8 is set to the loaded CR8 (without a local APIC every
// KVM_RUN loads CR8 from it) and the vCPU is entered once with
// immediate_exit set, so that kvm_run's if_flag and
// ready_for_interrupt_injection describe the loaded state, as they do on
// the primary after CaptureCPU.
func (v *VM) RestoreCPU(st *CPUState) error {
	if err := v.restoreCPU(st); err != nil {
		return fmt.Errorf("restore vCPU state: %w", err)
	}
	return nil
}

func (v *VM) restoreCPU(st *CPUState) error {
	if err := st.validate(); err != nil {
		return err
	}
	hasXSave, hasXCRs, err := v.fpCaps()
	if err != nil {
		return err
	}
	if st.HasXSave && !hasXSave {
		return fmt.Errorf("the state has an XSAVE image and this host's KVM lacks KVM_CAP_XSAVE")
	}
	if len(st.XCRs) > 0 && !hasXCRs {
		return fmt.Errorf("the state has %d XCRs and this host's KVM lacks KVM_CAP_XCRS", len(st.XCRs))
	}
	if err := v.completeLastExit(); err != nil {
		return err
	}
	sregs := st.Sregs
	if err := v.vcpu.SetSregs(&sregs); err != nil {
		return err
	}
	if err := v.vcpu.SetMSRs(st.MSRs); err != nil {
		return err
	}
	regs := st.Regs
	if err := v.vcpu.SetRegs(&regs); err != nil {
		return err
	}
	if len(st.XCRs) > 0 {
		var x kvm.XCRs
		x.NrXCRs = uint32(copy(x.XCRs[:], st.XCRs))
		if err := v.vcpu.SetXCRs(&x); err != nil {
			return err
		}
	}
	if st.HasXSave {
		xs := st.XSave
		if err := v.vcpu.SetXSave(&xs); err != nil {
			return err
		}
	} else {
		fpu := st.FPU
		if err := v.vcpu.SetFPU(&fpu); err != nil {
			return err
		}
	}
	dbg := st.Debug
	if err := v.vcpu.SetDebugRegs(&dbg); err != nil {
		return err
	}
	ev := st.Events
	if err := v.vcpu.SetVCPUEvents(&ev); err != nil {
		return err
	}
	v.vcpu.SetRunCR8(st.Sregs.CR8)
	return v.enterWithoutRunning()
}

// fpCaps reports whether KVM offers KVM_GET_XSAVE and KVM_GET_XCRS here.
func (v *VM) fpCaps() (xsave, xcrs bool, err error) {
	n, err := v.sys.CheckExtension(kvm.CapXSave)
	if err != nil {
		return false, false, err
	}
	m, err := v.sys.CheckExtension(kvm.CapXCRs)
	if err != nil {
		return false, false, err
	}
	return n > 0, m > 0, nil
}

// completeLastExit lets KVM finish the instruction of the vCPU's last exit
// if that exit left one half done: a port or MMIO access (or a hypercall
// or MSR access handed to userspace, which ftvm does not enable), whose
// completion KVM keeps in kernel state that no ioctl reads or writes.
// KVM_RUN leaves exit_reason alone when it returns before entering the
// guest, so after the completion the last exit still reads as I/O and a
// second call enters again, finding nothing to complete.
func (v *VM) completeLastExit() error {
	switch v.vcpu.LastExitKind() {
	case kvm.ExitIO, kvm.ExitMMIO, kvm.ExitHypercall, kvm.ExitX86RDMSR, kvm.ExitX86WRMSR:
		return v.enterWithoutRunning()
	}
	return nil
}

// enterWithoutRunning issues one KVM_RUN with immediate_exit set: KVM
// completes any pending I/O, loads CR8 from kvm_run, refreshes kvm_run's
// status fields and returns EINTR without running the guest. A kick
// pending before the call stays pending.
func (v *VM) enterWithoutRunning() error {
	kicked := v.vcpu.ImmediateExit()
	v.vcpu.SetImmediateExit(true)
	exit, err := v.vcpu.Run()
	if !kicked {
		v.vcpu.SetImmediateExit(false)
	}
	if err != nil {
		return fmt.Errorf("complete the last exit: %w", err)
	}
	if exit.Kind != kvm.ExitInterrupted {
		// The completion itself needed userspace again (an access split
		// across two MMIO exits): the exit loop must handle it first.
		return fmt.Errorf("completing the last exit's instruction made the vCPU exit again (%v); capture or restore at another exit", exit.Kind)
	}
	return nil
}

// MSR numbers (Intel SDM vol. 4, AMD APM vol. 2).
const (
	msrFeatureControl    = 0x3a
	msrSpecCtrl          = 0x48
	msrMiscFeatures      = 0x140
	msrSysenterCS        = 0x174
	msrSysenterESP       = 0x175
	msrSysenterEIP       = 0x176
	msrMCGCap            = 0x179
	msrMCGStatus         = 0x17a
	msrMCGCtl            = 0x17b
	msrMiscEnable        = 0x1a0
	msrXFD               = 0x1c4
	msrXFDErr            = 0x1c5
	msrPowerCtl          = 0x1fc
	msrMTRRPhysBase0     = 0x200
	msrMTRRFix64K        = 0x250
	msrMTRRFix16K80000   = 0x258
	msrMTRRFix16KA0000   = 0x259
	msrMTRRFix4KC0000    = 0x268 // through 0x26f
	msrPAT               = 0x277
	msrMC0Ctl2           = 0x280
	msrMTRRDefType       = 0x2ff
	msrMC0Ctl            = 0x400 // bank i: CTL, STATUS, ADDR, MISC at 0x400+4i..
	msrMCGExtCtl         = 0x4d0
	msrMTRRCap           = 0xfe
	msrStar              = 0xc0000081
	msrLStar             = 0xc0000082
	msrCStar             = 0xc0000083
	msrSyscallMask       = 0xc0000084
	msrKernelGSBase      = 0xc0000102
	msrAMDHWCR           = 0xc0010015
	msrAMDVirtSpecCtrl   = 0xc001011f
	maxMCEBanks          = 32 // KVM_MAX_MCE_BANKS
	cpuidMCE             = 1 << 7
	cpuidMTRR            = 1 << 12
	cpuidMCA             = 1 << 14
	mcgCapCtlPresent     = 1 << 8
	mcgCapCMCIPresent    = 1 << 10
	mtrrCapFixedSupport  = 1 << 8
	mtrrCapVariableCount = 0xff
)

// baseCheckpointMSRs every x86-64 vCPU has; a 64-bit Linux guest programs
// all of them at boot.
var baseCheckpointMSRs = []uint32{
	msrSysenterCS, msrSysenterESP, msrSysenterEIP, // SYSENTER: 32-bit system calls
	msrPAT,                                      // memory types the page tables select
	msrStar, msrLStar, msrCStar, msrSyscallMask, // SYSCALL entry points and RFLAGS mask
	msrKernelGSBase, // the GS base SWAPGS swaps in
}

// optionalCheckpointMSRs are carried when KVM lists them (they depend on
// the host CPU): state a guest writes and reads back.
var optionalCheckpointMSRs = []uint32{
	msrFeatureControl, // IA32_FEATURE_CONTROL: Linux locks it at boot (Intel)
	msrSpecCtrl,       // IBRS/STIBP/SSBD, written on every kernel entry under some mitigations
	msrMiscFeatures,   // CPUID faulting (arch_prctl(ARCH_SET_CPUID))
	msrMiscEnable,     // fast strings, XD disable, limit-CPUID
	msrXFD, msrXFDErr, // extended feature disable (with AMX)
	msrPowerCtl,        // C1E control
	msrMCGExtCtl,       // local machine-check enable (Intel LMCE)
	msrAMDHWCR,         // AMD hardware configuration (McStatusWrEn)
	msrAMDVirtSpecCtrl, // AMD virtual SSBD
}

// checkpointMSRs lists, sorted, the MSRs a checkpoint carries for this
// vCPU: the base set; the optional ones KVM lists; the MTRRs if the
// guest's CPUID has MTRR; MCG_STATUS if it has MCE; MCG_CTL and the
// machine-check banks MCG_CAP announces if it has MCA. The MTRRs and banks
// are not in KVM's MSR index list although KVM emulates them. See CPUState
// for what is left out and why.
func (v *VM) checkpointMSRs() ([]uint32, error) {
	listed, err := v.sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	cpuid, err := v.vcpu.GetCPUID2()
	if err != nil {
		return nil, err
	}
	var leaf1EDX uint32
	for _, e := range cpuid {
		if e.Function == 1 {
			leaf1EDX = e.EDX
		}
	}
	idx := slices.Clone(baseCheckpointMSRs)
	for _, m := range optionalCheckpointMSRs {
		if slices.Contains(listed, m) {
			idx = append(idx, m)
		}
	}
	if leaf1EDX&cpuidMTRR != 0 {
		capMSR := []kvm.MSREntry{{Index: msrMTRRCap}}
		if err := v.vcpu.GetMSRs(capMSR); err != nil {
			return nil, err
		}
		idx = append(idx, msrMTRRDefType)
		if capMSR[0].Data&mtrrCapFixedSupport != 0 {
			idx = append(idx, msrMTRRFix64K, msrMTRRFix16K80000, msrMTRRFix16KA0000)
			for i := uint32(0); i < 8; i++ {
				idx = append(idx, msrMTRRFix4KC0000+i)
			}
		}
		for i := uint32(0); i < uint32(capMSR[0].Data&mtrrCapVariableCount); i++ {
			idx = append(idx, msrMTRRPhysBase0+2*i, msrMTRRPhysBase0+2*i+1)
		}
	}
	if leaf1EDX&cpuidMCE != 0 {
		idx = append(idx, msrMCGStatus)
	}
	if leaf1EDX&(cpuidMCE|cpuidMCA) == cpuidMCE|cpuidMCA {
		capMSR := []kvm.MSREntry{{Index: msrMCGCap}}
		if err := v.vcpu.GetMSRs(capMSR); err != nil {
			return nil, err
		}
		mcgCap := capMSR[0].Data
		if mcgCap&mcgCapCtlPresent != 0 {
			idx = append(idx, msrMCGCtl)
		}
		banks := min(uint32(mcgCap&0xff), maxMCEBanks)
		for i := uint32(0); i < banks; i++ {
			idx = append(idx, msrMC0Ctl+4*i, msrMC0Ctl+4*i+1, msrMC0Ctl+4*i+2, msrMC0Ctl+4*i+3)
			if mcgCap&mcgCapCMCIPresent != 0 {
				idx = append(idx, msrMC0Ctl2+i)
			}
		}
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	if len(idx) > MaxCPUStateMSRs {
		return nil, fmt.Errorf("%d MSRs to carry, the encoding takes at most %d", len(idx), MaxCPUStateMSRs)
	}
	return idx, nil
}
