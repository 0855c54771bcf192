//go:build linux && amd64

package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU and its kvm_run page.
//
// A VCPU is driven from one goroutine that has called runtime.LockOSThread
// and keeps the thread locked for as long as it runs the vCPU: KVM ties
// vCPU state to the calling thread, and a Kicker signals that exact thread.
// The methods are not safe for concurrent use, with the exception of Kicker.
type VCPU struct {
	fd  int
	id  int
	run []byte // the mmap'd struct kvm_run
	hdr *runHeader
}

// CreateVCPU creates vCPU id (its initial APIC ID) and maps its kvm_run page.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(fd)
	run, err := unix.Mmap(fd, 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vcpu %d: mmap kvm_run (%d bytes): %w", id, vm.mmapSize, err)
	}
	return newVCPU(fd, id, run), nil
}

func newVCPU(fd, id int, run []byte) *VCPU {
	return &VCPU{fd: fd, id: id, run: run, hdr: (*runHeader)(unsafe.Pointer(&run[0]))}
}

// ID is the id the vCPU was created with.
func (v *VCPU) ID() int { return v.id }

// Close unmaps kvm_run and closes the vCPU. Exits returned earlier become
// invalid: their slices pointed into the unmapped page.
func (v *VCPU) Close() error {
	if v.fd < 0 {
		return nil
	}
	var errs []error
	if err := unix.Munmap(v.run); err != nil {
		errs = append(errs, fmt.Errorf("vcpu %d: munmap kvm_run: %w", v.id, err))
	}
	if err := unix.Close(v.fd); err != nil {
		errs = append(errs, fmt.Errorf("vcpu %d: close: %w", v.id, err))
	}
	v.fd, v.run, v.hdr = -1, nil, nil
	return errors.Join(errs...)
}

// Run enters the guest once (KVM_RUN) and returns the decoded exit.
//
// It never retries: if a signal interrupts KVM_RUN, or immediate_exit was set
// (see Kicker), it returns an exit of kind ExitInterrupted and a nil error,
// and it is the caller that decides whether to clear immediate_exit and run
// again. Any signal delivered to the thread has the same effect (the
// profiler's SIGPROF, for instance), so ExitInterrupted means "not caused by
// the guest", not "kicked". Any other failure of the ioctl is returned as an
// error.
//
// Before calling Run again after an ExitIO with In set or an ExitMMIO read,
// write the result into the exit's Data; KVM completes the instruction with
// it on re-entry.
func (v *VCPU) Run() (Exit, error) {
	_, err := runIoctl(v.fd, kvmRun, 0)
	if err != nil {
		if err == unix.EINTR {
			return Exit{Kind: ExitInterrupted}, nil
		}
		return Exit{}, v.runError(err)
	}
	return decodeExit(v.run), nil
}

// runError is kept out of line so Run's fast path stays small.
//
//go:noinline
func (v *VCPU) runError(err error) error {
	return fmt.Errorf("vcpu %d: KVM_RUN: %w", v.id, err)
}

// RunData returns the whole kvm_run mapping, for state the typed accessors
// don't cover (e.g. synchronized registers).
func (v *VCPU) RunData() []byte { return v.run }

// SetImmediateExit sets or clears kvm_run.immediate_exit. While it is set,
// Run returns ExitInterrupted without entering the guest; the vCPU goroutine
// clears it once it has handled the kick.
func (v *VCPU) SetImmediateExit(on bool) {
	v.setRunBit(immediateExitBit, on)
}

// SetRequestInterruptWindow asks KVM to exit with ExitIRQWindowOpen as soon
// as the guest can accept an external interrupt
// (kvm_run.request_interrupt_window). It stays in effect until cleared.
func (v *VCPU) SetRequestInterruptWindow(on bool) {
	v.setRunBit(requestIRQWindowBit, on)
}

// ReadyForInterruptInjection reports whether, at the last exit, the guest
// could take an interrupt now (IF set, no interrupt shadow, nothing pending),
// i.e. whether Interrupt may be called before the next Run.
func (v *VCPU) ReadyForInterruptInjection() bool {
	return v.hdr.ReadyForInterruptInjection != 0
}

// IFFlag reports the guest's RFLAGS.IF at the last exit.
func (v *VCPU) IFFlag() bool { return v.hdr.IFFlag != 0 }

// Interrupt queues external interrupt vector for delivery on the next entry
// (KVM_INTERRUPT). It is only valid without an in-kernel irqchip and when
// ReadyForInterruptInjection is true.
func (v *VCPU) Interrupt(vector uint8) error {
	irq := interrupt{IRQ: uint32(vector)}
	if _, err := ioctlPtr(v.fd, kvmInterrupt, unsafe.Pointer(&irq)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_INTERRUPT vector %#x: %w", v.id, vector, err)
	}
	return nil
}

// GetRegs reads the general-purpose registers into r. Taking a pointer lets
// a caller that reads RIP at every exit reuse one Regs without allocating.
func (v *VCPU) GetRegs(r *Regs) error {
	if _, err := ioctlPtr(v.fd, kvmGetRegs, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_REGS: %w", v.id, err)
	}
	return nil
}

// SetRegs writes the general-purpose registers.
func (v *VCPU) SetRegs(r *Regs) error {
	if _, err := ioctlPtr(v.fd, kvmSetRegs, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_REGS: %w", v.id, err)
	}
	return nil
}

// GetSregs reads the segment, descriptor-table and control registers.
func (v *VCPU) GetSregs(s *Sregs) error {
	if _, err := ioctlPtr(v.fd, kvmGetSregs, unsafe.Pointer(s)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_SREGS: %w", v.id, err)
	}
	return nil
}

// SetSregs writes the segment, descriptor-table and control registers.
func (v *VCPU) SetSregs(s *Sregs) error {
	if _, err := ioctlPtr(v.fd, kvmSetSregs, unsafe.Pointer(s)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_SREGS: %w", v.id, err)
	}
	return nil
}

// GetFPU reads the x87/SSE state.
func (v *VCPU) GetFPU(f *FPU) error {
	if _, err := ioctlPtr(v.fd, kvmGetFPU, unsafe.Pointer(f)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_FPU: %w", v.id, err)
	}
	return nil
}

// SetFPU writes the x87/SSE state.
func (v *VCPU) SetFPU(f *FPU) error {
	if _, err := ioctlPtr(v.fd, kvmSetFPU, unsafe.Pointer(f)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_FPU: %w", v.id, err)
	}
	return nil
}

// GetVCPUEvents reads pending/injected events and the interrupt shadow.
func (v *VCPU) GetVCPUEvents(e *VCPUEvents) error {
	if _, err := ioctlPtr(v.fd, kvmGetVCPUEvents, unsafe.Pointer(e)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_VCPU_EVENTS: %w", v.id, err)
	}
	return nil
}

// SetVCPUEvents restores what GetVCPUEvents read.
func (v *VCPU) SetVCPUEvents(e *VCPUEvents) error {
	if _, err := ioctlPtr(v.fd, kvmSetVCPUEvents, unsafe.Pointer(e)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_VCPU_EVENTS: %w", v.id, err)
	}
	return nil
}

// GetMSRs reads the MSRs named by the Index of each entry into its Data. It
// fails if KVM cannot read all of them, naming the first it could not.
func (v *VCPU) GetMSRs(entries []MSREntry) error {
	if len(entries) == 0 {
		return nil
	}
	buf := newMSRsBuf(entries)
	n, err := ioctlPtr(v.fd, kvmGetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("vcpu %d: KVM_GET_MSRS: %w", v.id, err)
	}
	copy(entries, msrsBufEntries(buf, len(entries)))
	if n < len(entries) {
		return fmt.Errorf("vcpu %d: KVM_GET_MSRS: read %d of %d, MSR %#x unsupported", v.id, n, len(entries), entries[n].Index)
	}
	return nil
}

// SetMSRs writes the given MSRs. It fails if KVM rejects any of them,
// naming the first it rejected.
func (v *VCPU) SetMSRs(entries []MSREntry) error {
	if len(entries) == 0 {
		return nil
	}
	buf := newMSRsBuf(entries)
	n, err := ioctlPtr(v.fd, kvmSetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_MSRS: %w", v.id, err)
	}
	if n < len(entries) {
		return fmt.Errorf("vcpu %d: KVM_SET_MSRS: wrote %d of %d, MSR %#x rejected", v.id, n, len(entries), entries[n].Index)
	}
	return nil
}

// newMSRsBuf builds a struct kvm_msrs holding a copy of entries, from uint64
// words so it is 8-byte aligned.
func newMSRsBuf(entries []MSREntry) []uint64 {
	words := (int(unsafe.Sizeof(msrsHeader{})) + len(entries)*int(unsafe.Sizeof(MSREntry{}))) / 8
	buf := make([]uint64, words)
	(*msrsHeader)(unsafe.Pointer(&buf[0])).NMSRs = uint32(len(entries))
	copy(msrsBufEntries(buf, len(entries)), entries)
	return buf
}

func msrsBufEntries(buf []uint64, n int) []MSREntry {
	first := (*MSREntry)(unsafe.Add(unsafe.Pointer(&buf[0]), unsafe.Sizeof(msrsHeader{})))
	return unsafe.Slice(first, n)
}

// SetCPUID2 sets what CPUID returns to the guest (KVM_SET_CPUID2). Leaves
// not listed read as zero. Set it before the first Run: later changes are
// refused by recent kernels.
func (v *VCPU) SetCPUID2(entries []CPUIDEntry2) error {
	buf := newCPUID2Buf(len(entries))
	_, dst := splitCPUID2Buf(buf)
	copy(dst, entries)
	if _, err := ioctlPtr(v.fd, kvmSetCPUID2, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_CPUID2 (%d entries): %w", v.id, len(entries), err)
	}
	return nil
}

// SetGuestDebug turns single-stepping on or off (KVM_SET_GUEST_DEBUG). While
// on, every guest instruction ends in an ExitDebug.
func (v *VCPU) SetGuestDebug(singleStep bool) error {
	var d guestDebug
	if singleStep {
		d.Control = guestDbgEnable | guestDbgSingleStep
	}
	if _, err := ioctlPtr(v.fd, kvmSetGuestDebug, unsafe.Pointer(&d)); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_GUEST_DEBUG single-step=%t: %w", v.id, singleStep, err)
	}
	return nil
}
