// Package kvm owns the typed Go bindings to the Linux KVM API on x86-64: the
// /dev/kvm system handle, VMs, guest memory regions and dirty logging, vCPUs
// with their mmap'd kvm_run page, register state, CPUID and MSRs, the rest
// of the state a checkpoint carries (XSAVE, XCRs, debug registers, vCPU
// events), and the decoding of VM exits into typed values.
//
// It is a thin layer over ioctl(2) through golang.org/x/sys/unix; it uses no
// cgo, and it defines the KVM ioctl numbers and structure layouts itself
// (x/sys has none of them), with tests that pin them to the kernel's uapi.
//
// It knows nothing of devices, boot, or replay. The one policy it does encode
// is the one the determinism contract depends on: VCPU.Run performs exactly
// one KVM_RUN and never retries it on EINTR, so a kick (see Kicker) always
// surfaces to the caller as an ExitInterrupted exit. Every other ioctl is
// issued again when a signal interrupts it.
//
// The vCPU exit loop is the hot path: Run and exit decoding do not allocate,
// take no locks, and hand out I/O and MMIO data as slices that alias the
// kvm_run page, so a handler completes an IN or MMIO read by writing into
// them before the next Run.
package kvm
