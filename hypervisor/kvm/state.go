//go:build linux && amd64

package kvm

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The vCPU state a checkpoint carries beyond registers and MSRs: the
// extended FPU state, the extended control registers, the debug registers,
// the kvm_run fields a restore must keep consistent, and the ioctls that
// say which MSRs and CPUID leaves exist. The structures are in types.go.

// Bytes returns the region as bytes (aliasing x).
func (x *XSave) Bytes() []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&x.Region[0])), XSaveSize)
}

// MSRIndexList returns the MSRs KVM can save and restore on this host
// (KVM_GET_MSR_INDEX_LIST): the host-dependent ones it passes through or
// emulates and the KVM-specific ones. Architectural MSRs every x86-64 vCPU
// has (the SYSCALL and SYSENTER MSRs, PAT) are in it too; the MTRRs and the
// machine-check banks are not, although KVM emulates them.
func (s *System) MSRIndexList() ([]uint32, error) {
	// The kernel answers E2BIG with the count it needs; it may grow in
	// between (never, in practice), so retry a few times.
	n := 256
	for try := 0; try < 4; try++ {
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		_, err := ioctlPtr(s.fd, kvmGetMSRIndexList, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			n = int(buf[0])
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: KVM_GET_MSR_INDEX_LIST: %w", s.path, err)
		}
		got := int(buf[0])
		if got > n {
			return nil, fmt.Errorf("%s: KVM_GET_MSR_INDEX_LIST: %d entries in a buffer of %d", s.path, got, n)
		}
		return buf[1 : 1+got], nil
	}
	return nil, fmt.Errorf("%s: KVM_GET_MSR_INDEX_LIST: the list kept growing", s.path)
}

// GetCPUID2 returns the CPUID table the vCPU presents to the guest
// (KVM_GET_CPUID2): what SetCPUID2 set.
func (v *VCPU) GetCPUID2() ([]CPUIDEntry2, error) {
	// Linux 6.1 reports the table's size neither on success (nent is left
	// as passed) nor on E2BIG (the header is not copied back), so the
	// buffer is pre-filled with entries whose flags no real entry has, and
	// the table ends at the first of them that is still there.
	const sentinel = ^uint32(0)
	for n := 256; n <= 4096; n *= 2 {
		buf := newCPUID2Buf(n)
		_, entries := splitCPUID2Buf(buf)
		for i := range entries {
			entries[i].Flags = sentinel
		}
		_, err := ioctlPtr(v.fd, kvmGetCPUID2, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("vcpu %d: KVM_GET_CPUID2: %w", v.id, err)
		}
		end := 0
		for end < len(entries) && entries[end].Flags != sentinel {
			end++
		}
		return append([]CPUIDEntry2(nil), entries[:end]...), nil
	}
	return nil, fmt.Errorf("vcpu %d: KVM_GET_CPUID2: more than 4096 entries", v.id)
}

// GetXSave reads the guest's XSAVE state (KVM_GET_XSAVE).
func (v *VCPU) GetXSave(x *XSave) error {
	if _, err := ioctlPtr(v.fd, kvmGetXSave, unsafe.Pointer(x)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_XSAVE: %w", v.id, err)
	}
	return nil
}

// SetXSave writes the guest's XSAVE state (KVM_SET_XSAVE). KVM refuses
// components the host does not support (EINVAL).
func (v *VCPU) SetXSave(x *XSave) error {
	if _, err := ioctlPtr(v.fd, kvmSetXSave, unsafe.Pointer(x)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_XSAVE: %w", v.id, err)
	}
	return nil
}

// GetXCRs reads the extended control registers (KVM_GET_XCRS).
func (v *VCPU) GetXCRs(x *XCRs) error {
	if _, err := ioctlPtr(v.fd, kvmGetXCRs, unsafe.Pointer(x)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_XCRS: %w", v.id, err)
	}
	return nil
}

// SetXCRs writes the extended control registers (KVM_SET_XCRS). KVM
// refuses an XCR0 the guest's CPUID leaf 0xD does not allow (EINVAL).
func (v *VCPU) SetXCRs(x *XCRs) error {
	if _, err := ioctlPtr(v.fd, kvmSetXCRs, unsafe.Pointer(x)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_XCRS: %w", v.id, err)
	}
	return nil
}

// GetDebugRegs reads DR0-DR3, DR6 and DR7 (KVM_GET_DEBUGREGS).
func (v *VCPU) GetDebugRegs(d *DebugRegs) error {
	if _, err := ioctlPtr(v.fd, kvmGetDebugRegs, unsafe.Pointer(d)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_DEBUGREGS: %w", v.id, err)
	}
	return nil
}

// SetDebugRegs writes DR0-DR3, DR6 and DR7 (KVM_SET_DEBUGREGS). KVM
// refuses reserved bits set in DR6 or DR7 and a non-zero Flags (EINVAL).
func (v *VCPU) SetDebugRegs(d *DebugRegs) error {
	if _, err := ioctlPtr(v.fd, kvmSetDebugRegs, unsafe.Pointer(d)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_DEBUGREGS: %w", v.id, err)
	}
	return nil
}

// SetRunCR8 writes kvm_run.cr8. Without an in-kernel local APIC, every
// KVM_RUN loads the guest's CR8 (its task priority) from this field before
// anything else, and KVM writes it back at each exit. A VMM that sets CR8
// through SetSregs must put the same value here, or the next Run reverts
// it.
func (v *VCPU) SetRunCR8(cr8 uint64) {
	v.hdr.CR8 = cr8
}

// ImmediateExit reports whether kvm_run.immediate_exit is set: a kick
// (or SetImmediateExit) is pending and the next Run returns ExitInterrupted
// without entering the guest.
func (v *VCPU) ImmediateExit() bool {
	return atomic.LoadUint32(v.runWord())&immediateExitBit != 0
}

// LastExitKind is kvm_run.exit_reason: the reason of the last exit KVM
// reported. A KVM_RUN that fails with EINTR before entering the guest
// (immediate_exit set) leaves it unchanged.
func (v *VCPU) LastExitKind() ExitKind {
	return ExitKind(v.hdr.ExitReason)
}
