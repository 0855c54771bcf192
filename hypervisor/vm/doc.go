// Package vm assembles and runs one virtual machine: it creates the KVM VM
// and its single vCPU, lays out guest memory, loads the guest (a Linux
// kernel through hypervisor/boot, or a tiny raw real-mode program for
// tests), wires the userspace devices onto the port bus, and runs the vCPU
// exit loop.
//
// The loop follows DESIGN.md's determinism contract: there is no in-kernel
// irqchip, PIT or clock; interrupts are injected only at exits, with an
// interrupt window requested when the guest has them masked; HLT is handled
// here by waiting for the next timer deadline or device event; and all
// guest-visible time comes from one devices.Clock.
package vm
