package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// SetupHeader is struct setup_header (Documentation/arch/x86/boot.rst),
// which sits at offset 0x1F1 both in a bzImage file and in boot_params.
// encoding/binary packs fields without padding, exactly as the kernel's
// __attribute__((packed)) struct; comments give the absolute offset.
type SetupHeader struct {
	SetupSects          uint8  // 0x1f1
	RootFlags           uint16 // 0x1f2
	SysSize             uint32 // 0x1f4
	RAMSize             uint16 // 0x1f8
	VidMode             uint16 // 0x1fa
	RootDev             uint16 // 0x1fc
	BootFlag            uint16 // 0x1fe, 0xAA55
	Jump                uint16 // 0x200
	Header              uint32 // 0x202, "HdrS"
	Version             uint16 // 0x206
	RealmodeSwtch       uint32 // 0x208
	StartSysSeg         uint16 // 0x20c
	KernelVersion       uint16 // 0x20e
	TypeOfLoader        uint8  // 0x210
	LoadFlags           uint8  // 0x211
	SetupMoveSize       uint16 // 0x212
	Code32Start         uint32 // 0x214
	RamdiskImage        uint32 // 0x218
	RamdiskSize         uint32 // 0x21c
	BootsectKludge      uint32 // 0x220
	HeapEndPtr          uint16 // 0x224
	ExtLoaderVer        uint8  // 0x226
	ExtLoaderType       uint8  // 0x227
	CmdLinePtr          uint32 // 0x228
	InitrdAddrMax       uint32 // 0x22c
	KernelAlignment     uint32 // 0x230
	RelocatableKernel   uint8  // 0x234
	MinAlignment        uint8  // 0x235
	XLoadFlags          uint16 // 0x236
	CmdlineSize         uint32 // 0x238
	HardwareSubarch     uint32 // 0x23c
	HardwareSubarchData uint64 // 0x240
	PayloadOffset       uint32 // 0x248
	PayloadLength       uint32 // 0x24c
	SetupData           uint64 // 0x250
	PrefAddress         uint64 // 0x258
	InitSize            uint32 // 0x260
	HandoverOffset      uint32 // 0x264
	KernelInfoOffset    uint32 // 0x268
}

// E820Entry is struct boot_e820_entry: 20 packed bytes.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// e820 types (ACPI address range types).
const (
	E820RAM      uint32 = 1
	E820Reserved uint32 = 2
	E820ACPI     uint32 = 3
	E820NVS      uint32 = 4
)

// E820MaxEntries is E820_MAX_ENTRIES_ZEROPAGE.
const E820MaxEntries = 128

// BootParams is struct boot_params, the 4 KiB "zero page"
// (Documentation/arch/x86/zero-page.rst). Fields the loader never sets are
// kept as byte arrays so that offsets stay right; blank fields are padding
// the kernel defines as reserved.
type BootParams struct {
	ScreenInfo          [0x40]byte                // 0x000
	APMBIOSInfo         [0x14]byte                // 0x040
	_                   [4]byte                   // 0x054
	TbootAddr           uint64                    // 0x058
	ISTInfo             [0x10]byte                // 0x060
	ACPIRSDPAddr        uint64                    // 0x070
	_                   [8]byte                   // 0x078
	HD0Info             [0x10]byte                // 0x080
	HD1Info             [0x10]byte                // 0x090
	SysDescTable        [0x10]byte                // 0x0a0
	OLPCOFWHeader       [0x10]byte                // 0x0b0
	ExtRamdiskImage     uint32                    // 0x0c0
	ExtRamdiskSize      uint32                    // 0x0c4
	ExtCmdLinePtr       uint32                    // 0x0c8
	_                   [0x70]byte                // 0x0cc
	CCBlobAddress       uint32                    // 0x13c
	EDIDInfo            [0x80]byte                // 0x140
	EFIInfo             [0x20]byte                // 0x1c0
	AltMemK             uint32                    // 0x1e0
	Scratch             uint32                    // 0x1e4
	E820Entries         uint8                     // 0x1e8
	EDDBufEntries       uint8                     // 0x1e9
	EDDMBRSigBufEntries uint8                     // 0x1ea
	KbdStatus           uint8                     // 0x1eb
	SecureBoot          uint8                     // 0x1ec
	_                   [2]byte                   // 0x1ed
	Sentinel            uint8                     // 0x1ef
	_                   [1]byte                   // 0x1f0
	Hdr                 SetupHeader               // 0x1f1
	_                   [0x24]byte                // 0x26c
	EDDMBRSigBuffer     [16]uint32                // 0x290
	E820Table           [E820MaxEntries]E820Entry // 0x2d0
	_                   [0x30]byte                // 0xcd0
	EDDBuf              [0x1ec]byte               // 0xd00
	_                   [0x114]byte               // 0xeec
}

// Setup header constants (boot.rst).
const (
	hdrMagic       = 0x53726448 // "HdrS" little endian
	bootFlagMagic  = 0xaa55
	setupHeaderOff = 0x1f1
	setupHeaderEnd = 0x26c

	// TypeOfLoaderUndefined is the ID boot.rst assigns to boot loaders
	// without an assigned ID.
	TypeOfLoaderUndefined = 0xff

	LoadedHigh = 0x01 // protected-mode code loaded at 0x100000 or above
	CanUseHeap = 0x80 // heap_end_ptr is valid

	XLFKernel64 = 0x01 // has the 64-bit entry at load address + 0x200

	// heapEndPtr is what boot.rst suggests for a loader that gives the
	// real-mode code the whole segment: 0xFE00 - 0x200. The real-mode
	// code does not run under the 64-bit protocol, but a kernel reading
	// the header sees a consistent, documented value.
	heapEndPtr = 0xfe00 - 0x200

	// protocolRSDP is the first protocol version with acpi_rsdp_addr.
	protocolRSDP = 0x020e
)

// MarshalBinary serializes the zero page to its 4096 bytes.
func (bp *BootParams) MarshalBinary() ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(PageSize)
	if err := binary.Write(&buf, binary.LittleEndian, bp); err != nil {
		return nil, fmt.Errorf("encode boot_params: %w", err)
	}
	return buf.Bytes(), nil
}

// E820Table returns the guest's memory map for memSize bytes of RAM: RAM
// below the EBDA, the EBDA and the legacy VGA/BIOS hole reserved, RAM from
// 1 MiB up to the MMIO gap, and the rest of RAM above 4 GiB.
func E820Table(memSize uint64) []E820Entry {
	t := []E820Entry{
		{Addr: 0, Size: EBDAStart, Type: E820RAM},
		{Addr: EBDAStart, Size: LegacyHoleStart - EBDAStart, Type: E820Reserved},
		{Addr: LegacyHoleStart, Size: HighMemStart - LegacyHoleStart, Type: E820Reserved},
	}
	if low := lowMemEnd(memSize); low > HighMemStart {
		t = append(t, E820Entry{Addr: HighMemStart, Size: low - HighMemStart, Type: E820RAM})
	}
	if memSize > MMIOGapStart {
		t = append(t, E820Entry{Addr: MMIOGapEnd, Size: memSize - MMIOGapStart, Type: E820RAM})
	}
	return t
}

// bootParamsInput is what the zero page describes.
type bootParamsInput struct {
	hdr        SetupHeader
	memSize    uint64
	cmdlineLen int // without the NUL; 0 means no command line
	initrdAddr uint64
	initrdSize uint64
	rsdp       uint64
}

// buildBootParams fills the zero page from a kernel's setup header: the
// fields boot.rst marks "write" for the loader, the e820 map, and the RSDP
// address when the kernel's protocol has the field.
func buildBootParams(in bootParamsInput) (*BootParams, error) {
	bp := &BootParams{Hdr: in.hdr}
	h := &bp.Hdr
	h.TypeOfLoader = TypeOfLoaderUndefined
	h.LoadFlags |= LoadedHigh | CanUseHeap
	h.HeapEndPtr = heapEndPtr
	if in.cmdlineLen > 0 {
		h.CmdLinePtr = uint32(CmdlineAddr)
	}
	if in.initrdSize > 0 {
		if in.initrdAddr+in.initrdSize > 1<<32 {
			// ext_ramdisk_* would allow it, but we never place the
			// initrd above the MMIO gap.
			return nil, fmt.Errorf("initrd at %#x+%#x above 4 GiB", in.initrdAddr, in.initrdSize)
		}
		h.RamdiskImage = uint32(in.initrdAddr)
		h.RamdiskSize = uint32(in.initrdSize)
	}
	if in.rsdp != 0 && h.Version >= protocolRSDP {
		bp.ACPIRSDPAddr = in.rsdp
	}
	e820 := E820Table(in.memSize)
	if len(e820) > E820MaxEntries {
		return nil, fmt.Errorf("e820 map has %d entries, zero page holds %d", len(e820), E820MaxEntries)
	}
	bp.E820Entries = uint8(len(e820))
	copy(bp.E820Table[:], e820)
	return bp, nil
}

// synthesizedHeader is the setup header for a kernel loaded without one
// (an ELF vmlinux entered at its 64-bit entry point): what a bzImage of
// protocol 2.15 would carry, so the kernel trusts cmd_line_ptr,
// ramdisk_* and acpi_rsdp_addr.
func synthesizedHeader() SetupHeader {
	return SetupHeader{
		BootFlag:      bootFlagMagic,
		Header:        hdrMagic,
		Version:       0x020f,
		InitrdAddrMax: 0x7fffffff,
		CmdlineSize:   LinuxCommandLineSize - 1,
		XLoadFlags:    XLFKernel64,
	}
}
