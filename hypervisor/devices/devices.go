// Package devices owns the userspace device models of an ftvm guest and the
// port-I/O bus that routes the guest's IN/OUT to them: the 16550 UART, the
// 8259 PIC pair, the 8254 PIT with port 0x61, the ACPI PM registers and PM
// timer, the CMOS RTC and the small legacy ports Linux touches at boot.
//
// Every model is a deterministic state machine (DESIGN.md, "The determinism
// contract"): its state changes only through guest accesses, calls from the
// vCPU exit loop, and the Clock. No model starts a goroutine or reads the
// host's time itself, so a backup that feeds the same inputs at the same
// exits sees the same device behaviour.
package devices

import "time"

// Clock is the only source of time a device may read. Each call is a
// guest-visible time read (the primary logs its value, the backup replays
// it), so a device calls it only when the guest's access needs the time,
// never speculatively.
type Clock interface {
	// Now is the time since the VM was powered on, monotonic.
	Now() time.Duration
}

// IRQSink receives a device's interrupt line. Edge-triggered devices pulse
// the line (high, then low); level-triggered ones hold it.
type IRQSink interface {
	SetIRQ(line uint8, high bool)
}

// PortDevice handles port I/O. data is 1, 2 or 4 bytes, little endian; a
// read fills it. port is the absolute port number.
type PortDevice interface {
	ReadPort(port uint16, data []byte)
	WritePort(port uint16, data []byte)
}

// MMIODevice handles memory-mapped I/O (virtio-mmio transports). addr is
// the absolute guest-physical address; data is 1, 2, 4 or 8 bytes, little
// endian; a read fills it.
type MMIODevice interface {
	ReadMMIO(addr uint64, data []byte)
	WriteMMIO(addr uint64, data []byte)
}

// Timer is a device with timed behaviour (the PIT). The exit loop calls
// Expire once the Clock passes NextDeadline; the device raises its
// interrupts there and computes its next deadline.
type Timer interface {
	// NextDeadline is when Expire is next needed; ok is false when the
	// device has no timed behaviour armed.
	NextDeadline() (deadline time.Duration, ok bool)
	Expire(now time.Duration)
}

// PowerControl receives the guest's requests to power off or reset the
// machine (ACPI S5, the keyboard controller's reset line, port 0xCF9).
type PowerControl interface {
	RequestPowerOff()
	RequestReset()
}

// Well-known legacy ports and IRQ lines on ftvm's machine.
const (
	COM1Port  uint16 = 0x3f8
	COM1IRQ   uint8  = 4
	PITIRQ    uint8  = 0
	RTCIRQ    uint8  = 8
	PIC1Port  uint16 = 0x20 // 0x20-0x21
	PIC2Port  uint16 = 0xa0 // 0xa0-0xa1
	PITPort   uint16 = 0x40 // 0x40-0x43
	Port61    uint16 = 0x61 // NMI status and control: PIT channel 2 gate/out, speaker
	CMOSPort  uint16 = 0x70 // 0x70-0x71
	I8042Port uint16 = 0x60 // 0x60 data, 0x64 status/command
	DebugPort uint16 = 0x80
	ResetPort uint16 = 0xcf9

	// ACPI fixed hardware, advertised by the FADT (hypervisor/acpi).
	PM1aEventPort   uint16 = 0x600 // 4 bytes: PM1 status (2) + enable (2)
	PM1aControlPort uint16 = 0x604 // 2 bytes
	PMTimerPort     uint16 = 0x608 // 4 bytes, 24-bit counter
	SCIIRQ          uint8  = 9

	// virtio-mmio transports: slot n occupies VirtioMMIOSize bytes at
	// VirtioMMIOBase + n*VirtioMMIOSize (inside the MMIO gap below 4 GiB
	// that hypervisor/boot leaves free) and interrupts on VirtioIRQs[n].
	// Linux finds them through virtio_mmio.device=<size>@<addr>:<irq> on the
	// kernel command line.
	VirtioMMIOBase uint64 = 0xd0000000
	VirtioMMIOSize uint64 = 0x1000

	// PMTimerHz is the ACPI PM timer's frequency, fixed by the ACPI spec.
	PMTimerHz = 3579545
	// PITHz is the 8254's input clock.
	PITHz = 1193182
)

// VirtioIRQs are the 8259 lines free for virtio-mmio devices on ftvm's
// machine (0 PIT, 1 keyboard, 2 cascade, 4 COM1, 8 RTC, 9 SCI are taken).
var VirtioIRQs = [...]uint8{5, 6, 7, 10, 11, 12, 14, 15} //nolint:gochecknoglobals // constant table
