package vm

import (
	"fmt"
	"strings"

	"github.com/ftvm/ftvm/hypervisor/acpi"
	"github.com/ftvm/ftvm/hypervisor/boot"
	"github.com/ftvm/ftvm/hypervisor/cpuid"
	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// portDevice is a device that knows its own port ranges.
type portDevice interface {
	devices.PortDevice
	Ports() []devices.PortRange
}

// wireDevices builds ftvm's machine: the legacy PC devices Linux expects,
// all in userspace, on one port bus, with the 8259 pair as the only
// interrupt controller.
func (v *VM) wireDevices(clock devices.Clock) error {
	pic := devices.NewPICPair()
	pit := devices.NewPIT(clock, pic)
	uart := devices.NewUART(devices.COM1Port, pic, devices.COM1IRQ, v.console)
	portB := devices.NewPortB(pit)
	rtc := devices.NewRTC(clock, v.cfg.WallTime)
	pm := devices.NewACPIPM(clock, v.loop, pic)
	legacy := devices.NewLegacy(v.loop)
	v.models = machineModels{pic: pic, pit: pit, portB: portB, uart: uart, rtc: rtc, pm: pm, legacy: legacy}
	bus := devices.NewPortBus()

	fixed := []struct {
		base, size uint16
		dev        devices.PortDevice
	}{
		{devices.PIC1Port, 2, pic},
		{devices.PIC2Port, 2, pic},
		{devices.ELCRPort, 2, pic},
		{devices.PITPort, 4, pit},
		{devices.Port61, 1, portB},
	}
	for _, f := range fixed {
		if err := bus.Register(f.base, f.size, f.dev); err != nil {
			return fmt.Errorf("wire devices: %w", err)
		}
	}
	for _, d := range []portDevice{uart, rtc, pm, legacy} {
		for _, r := range d.Ports() {
			if err := bus.Register(r.Base, r.Size, d); err != nil {
				return fmt.Errorf("wire devices: %w", err)
			}
		}
	}
	v.loop.bus, v.loop.pic, v.loop.console = bus, pic, uart
	v.loop.timers = []devices.Timer{pit}
	params, err := v.wireVirtio(pic)
	if err != nil {
		return err
	}
	v.virtioParams = params
	return v.setCPUID()
}

// setCPUID gives the vCPU what KVM supports, minus everything the
// determinism contract hides (clocks the VMM cannot see being read, the
// APIC, random numbers, KVM's paravirtual interfaces).
func (v *VM) setCPUID() error {
	entries, err := guestCPUID(v.sys)
	if err != nil {
		return err
	}
	if err := v.vcpu.SetCPUID2(entries); err != nil {
		return fmt.Errorf("set guest CPUID: %w", err)
	}
	return nil
}

// GuestCPUID returns what CPUID tells a guest booted on this host (KVM
// device dev, "" for the default): the same table a VM sets. A backup
// compares the primary's with its own, since a guest that saw other
// features would take other paths.
func GuestCPUID(dev string) ([]kvm.CPUIDEntry2, error) {
	sys, err := kvm.Open(dev)
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	return guestCPUID(sys)
}

func guestCPUID(sys *kvm.System) ([]kvm.CPUIDEntry2, error) {
	supported, err := sys.SupportedCPUID()
	if err != nil {
		return nil, fmt.Errorf("read KVM's supported CPUID: %w", err)
	}
	return cpuid.Policy(supported), nil
}

// loadLinux writes the ACPI tables and the kernel, initrd and command line
// into guest memory and sets the vCPU's entry state.
func (v *VM) loadLinux() error {
	mem := v.mem.Bytes()
	rsdp, err := acpi.Build(mem[boot.ACPIStart:boot.ACPIEnd], boot.ACPIStart)
	if err != nil {
		return fmt.Errorf("build ACPI tables: %w", err)
	}
	entry, err := boot.Load(mem, boot.Config{
		KernelPath: v.cfg.Kernel,
		InitrdPath: v.cfg.Initrd,
		Cmdline:    strings.TrimSpace(v.cfg.Cmdline + " " + v.virtioParams),
		RSDP:       rsdp,
	})
	if err != nil {
		return err
	}
	var sregs kvm.Sregs
	if err := v.vcpu.GetSregs(&sregs); err != nil {
		return err
	}
	entry.SetupSregs(&sregs)
	disableLocalAPIC(&sregs)
	if err := v.vcpu.SetSregs(&sregs); err != nil {
		return err
	}
	return v.vcpu.SetRegs(&entry.Regs)
}

// disableLocalAPIC clears IA32_APIC_BASE's enable bit. There is no in-kernel
// irqchip, so no local APIC exists; but KVM derives CPUID.1:EDX.APIC from
// this MSR at run time, overriding the CPUID policy, and a fresh vCPU has it
// enabled. With the bit left on, Linux probes an APIC that is not there.
func disableLocalAPIC(s *kvm.Sregs) { s.APICBase = 0 }
