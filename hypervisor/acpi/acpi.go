// Package acpi owns the ACPI tables ftvm presents to its guest: RSDP, XSDT,
// FADT, FACS and a minimal DSDT, built into a byte region the caller maps
// at a guest physical address (boot.ACPIStart).
//
// The machine they describe is a legacy PC without an APIC: the FADT is not
// hardware-reduced, so Linux uses the fixed PM1a event/control registers and
// the 24-bit ACPI PM timer at the ports hypervisor/devices models, with the
// SCI on IRQ 9 of the 8259 PIC. There is deliberately no MADT: the CPUID
// policy hides the local APIC, and with no MADT (and no MP table) Linux
// routes interrupts through the PIC. (acpi_parse_madt in
// arch/x86/kernel/acpi/boot.c rejects a MADT anyway when CPUID has no APIC.)
//
// The DSDT holds only \_S5 so that Linux's ACPI power-off works; it defines
// no devices, so the guest's AML interpreter has nothing to probe.
package acpi

import (
	"encoding/binary"
	"fmt"

	"github.com/ftvm/ftvm/hypervisor/devices"
)

// Identification written into every table header.
const (
	OEMID           = "FTVM  "   // 6 bytes
	OEMTableID      = "FTVMACPI" // 8 bytes
	OEMRevision     = 1
	CreatorID       = "FTVM"
	CreatorRevision = 1
)

// Table sizes and revisions (ACPI 6.4).
const (
	headerLen = 36
	rsdpLen   = 36
	fadtLen   = 276
	fadtRev   = 6
	fadtMinor = 4 // FADT 6.4
	facsLen   = 64
	facsVer   = 2
	xsdtRev   = 1
	dsdtRev   = 2 // 64-bit AML integers
	rsdpRev   = 2
)

// Layout of the tables inside the region, as offsets from its start. The
// RSDP comes first and 16-byte aligned, as the BIOS-area scan requires; the
// FACS is 64-byte aligned as the spec requires.
const (
	rsdpOff = 0x000
	xsdtOff = 0x040
	fadtOff = 0x080
	facsOff = 0x1c0
	dsdtOff = 0x200
)

// Size is the room Build needs.
const Size = dsdtOff + headerLen + 0x40

// FADT flags (ACPI 6.4 table 5.10).
const (
	fadtWBINVD      = 1 << 0  // required of every ACPI machine
	fadtProcC1      = 1 << 2  // C1 (HLT) works: the vCPU's HLT is handled by the VMM
	fadtPwrButton   = 1 << 4  // no fixed-feature power button
	fadtSlpButton   = 1 << 5  // no fixed-feature sleep button
	fadtResetRegSup = 1 << 10 // RESET_REG is valid
)

// IA-PC boot architecture flags (ACPI 6.4 table 5.11).
const (
	bootArchLegacyDevices = 1 << 0 // ISA devices exist (UART, PIT, RTC, PIC)
	bootArch8042          = 1 << 1 // a (minimal) i8042 is modelled: ports 0x60/0x64
	bootArchNoVGA         = 1 << 2 // don't probe VGA
	bootArchNoMSI         = 1 << 3 // no PCI, no APIC: MSI impossible
)

// Generic Address Structure address space and access sizes.
const (
	gasSystemIO = 1
	accessByte  = 1
	accessWord  = 2
	accessDword = 3
)

// resetValue written to the reset port 0xCF9 requests a hard reset
// (bits 1 and 2), as on PIIX/ICH chipsets.
const resetValue = 0x06

// Build writes the tables into region, which the guest sees at guest
// physical address base, and returns the RSDP's guest address. region
// must hold Size bytes and base+Size must be below 4 GiB (32-bit pointers
// are filled in too).
func Build(region []byte, base uint64) (rsdpAddr uint64, err error) {
	if len(region) < Size {
		return 0, fmt.Errorf("build ACPI tables: region of %d bytes, need %d", len(region), Size)
	}
	if base%16 != 0 || base+Size > 1<<32 {
		return 0, fmt.Errorf("build ACPI tables: base %#x not 16-byte aligned below 4 GiB", base)
	}
	clear(region[:Size])
	dsdt := buildDSDT()
	if dsdtOff+len(dsdt) > Size {
		return 0, fmt.Errorf("build ACPI tables: DSDT of %d bytes overflows its slot", len(dsdt))
	}
	copy(region[dsdtOff:], dsdt)
	copy(region[facsOff:], buildFACS())
	copy(region[fadtOff:], buildFADT(base+facsOff, base+dsdtOff))
	copy(region[xsdtOff:], buildXSDT(base+fadtOff))
	copy(region[rsdpOff:], buildRSDP(base+xsdtOff))
	return base + rsdpOff, nil
}

// Checksum returns the byte that makes b sum to zero mod 256.
func Checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// header writes a standard description header with a zero checksum
// (finish fills it in once the table body is written).
func header(sig string, length int, rev byte) []byte {
	t := make([]byte, length)
	copy(t[0:4], sig)
	binary.LittleEndian.PutUint32(t[4:], uint32(length))
	t[8] = rev
	copy(t[10:16], OEMID)
	copy(t[16:24], OEMTableID)
	binary.LittleEndian.PutUint32(t[24:], OEMRevision)
	copy(t[28:32], CreatorID)
	binary.LittleEndian.PutUint32(t[32:], CreatorRevision)
	return t
}

func finish(t []byte) []byte {
	t[9] = 0
	t[9] = Checksum(t)
	return t
}

func buildRSDP(xsdt uint64) []byte {
	r := make([]byte, rsdpLen)
	copy(r[0:8], "RSD PTR ")
	copy(r[9:15], OEMID)
	r[15] = rsdpRev
	// RsdtAddress (16) stays 0: revision 2 OSes (Linux) use the XSDT.
	binary.LittleEndian.PutUint32(r[20:], rsdpLen)
	binary.LittleEndian.PutUint64(r[24:], xsdt)
	r[8] = Checksum(r[:20])  // ACPI 1.0 checksum: first 20 bytes
	r[32] = Checksum(r[:36]) // extended checksum: whole structure
	return r
}

func buildXSDT(tables ...uint64) []byte {
	t := header("XSDT", headerLen+8*len(tables), xsdtRev)
	for i, a := range tables {
		binary.LittleEndian.PutUint64(t[headerLen+8*i:], a)
	}
	return finish(t)
}

// gas encodes a Generic Address Structure for a system I/O register.
func gas(b []byte, port uint16, bits, access byte) {
	b[0] = gasSystemIO
	b[1] = bits
	b[2] = 0
	b[3] = access
	binary.LittleEndian.PutUint64(b[4:], uint64(port))
}

func buildFADT(facs, dsdt uint64) []byte {
	t := header("FACP", fadtLen, fadtRev)
	le := binary.LittleEndian
	// FIRMWARE_CTRL (36) carries the FACS: the spec wants X_FIRMWARE_CTRL
	// zero when it is set, and our FACS is below 4 GiB.
	le.PutUint32(t[36:], uint32(facs))
	le.PutUint32(t[40:], uint32(dsdt))
	// Preferred_PM_Profile (45) 0: unspecified.
	le.PutUint16(t[46:], uint16(devices.SCIIRQ))
	// SMI_CMD (48) 0: no SMM; the machine is always in ACPI mode, so the
	// OS never tries an ACPI_ENABLE handshake.
	le.PutUint32(t[56:], uint32(devices.PM1aEventPort))
	le.PutUint32(t[64:], uint32(devices.PM1aControlPort))
	le.PutUint32(t[76:], uint32(devices.PMTimerPort))
	t[88] = 4 // PM1_EVT_LEN: status + enable, 2 bytes each
	t[89] = 2 // PM1_CNT_LEN
	t[91] = 4 // PM_TMR_LEN
	// No GPE blocks, no C2/C3 (latencies above 100/1000 us say "not
	// supported"), no cache flush, no duty cycle, no RTC alarm fields.
	le.PutUint16(t[96:], 101)
	le.PutUint16(t[98:], 1001)
	// CENTURY (108) 0: the RTC has no century register the OS should use.
	le.PutUint16(t[109:], bootArchLegacyDevices|bootArch8042|bootArchNoVGA|bootArchNoMSI)
	// TMR_VAL_EXT (bit 8) clear: the PM timer is 24 bits, matching the
	// device model. HW_REDUCED_ACPI (bit 20) clear: fixed hardware exists.
	le.PutUint32(t[112:], fadtWBINVD|fadtProcC1|fadtPwrButton|fadtSlpButton|fadtResetRegSup)
	gas(t[116:], devices.ResetPort, 8, accessByte)
	t[128] = resetValue
	t[131] = fadtMinor
	// X_FIRMWARE_CTRL (132) 0, see above. X_DSDT (140) repeats DSDT.
	le.PutUint64(t[140:], dsdt)
	gas(t[148:], devices.PM1aEventPort, 32, accessWord)
	gas(t[172:], devices.PM1aControlPort, 16, accessWord)
	gas(t[208:], devices.PMTimerPort, 32, accessDword)
	// Hypervisor Vendor Identity (268) stays 0.
	return finish(t)
}

func buildFACS() []byte {
	f := make([]byte, facsLen)
	copy(f[0:4], "FACS")
	binary.LittleEndian.PutUint32(f[4:], facsLen)
	// Hardware signature, waking vectors, global lock, flags: all 0 (no
	// S3/S4, nothing shared with firmware). The FACS has no checksum.
	f[32] = facsVer
	return f
}

// AML opcodes used by the DSDT (ACPI 6.4 section 20).
const (
	amlNameOp     = 0x08
	amlPackageOp  = 0x12
	amlBytePrefix = 0x0a
	amlZeroOp     = 0x00
)

// SleepTypeS5 is the SLP_TYP value \_S5 tells the OS to write to PM1a_CNT
// (bits 10-12, with SLP_EN bit 13) to power off. The PM1 device model
// treats this value as the power-off request.
const SleepTypeS5 = 5

// buildDSDT returns a DSDT holding Name (_S5, Package () {5, 5, 0, 0}).
func buildDSDT() []byte {
	aml := []byte{
		amlNameOp, '_', 'S', '5', '_',
		amlPackageOp,
		0x08,                       // PkgLength: itself, NumElements and 6 bytes of elements
		0x04,                       // NumElements
		amlBytePrefix, SleepTypeS5, // SLP_TYPa
		amlBytePrefix, SleepTypeS5, // SLP_TYPb
		amlZeroOp, amlZeroOp, // reserved
	}
	t := header("DSDT", headerLen+len(aml), dsdtRev)
	copy(t[headerLen:], aml)
	return finish(t)
}
