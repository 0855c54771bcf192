package boot

// The guest physical memory map. Everything the loader writes for the
// kernel lives below 1 MiB, in conventional memory that the e820 table
// reports as RAM but that Linux does not touch before it has copied what it
// needs (boot_params, the command line, the PVH start info) out of it.
const (
	// GDTAddr holds the boot GDT (see gdt.go). It sits just above the
	// real-mode IVT and BIOS data area (0x0-0x4FF), which stay zero so
	// that Linux's BDA reads (EBDA pointer at 0x40E) find nothing.
	GDTAddr uint64 = 0x500
	// IDTAddr holds an empty 8-byte IDT, after the 40-byte GDT: the kernel runs with interrupts
	// off until it loads its own, and any exception before that should
	// triple-fault (a loud, visible failure) rather than vector somewhere.
	IDTAddr uint64 = 0x540

	// PVHStartInfoAddr holds struct hvm_start_info, then (at fixed offsets)
	// the module list and the memory map it points to. EBX points here at
	// PVH entry.
	PVHStartInfoAddr uint64 = 0x6000
	// PVHModlistAddr holds the hvm_modlist_entry for the initrd.
	PVHModlistAddr uint64 = 0x6040
	// PVHMemmapAddr holds the hvm_memmap_table_entry array; it runs up to
	// ZeroPageAddr, room for far more entries than we ever write.
	PVHMemmapAddr uint64 = 0x6080

	// ZeroPageAddr holds struct boot_params (4 KiB), whose address the
	// 64-bit boot protocol passes in RSI.
	ZeroPageAddr uint64 = 0x7000
	// BootStackAddr is the initial RSP for the 64-bit entry: the top of
	// the page between the zero page and the page tables. Linux sets up
	// its own stack almost at once, but a valid one makes an early fault
	// dump readable instead of compounding.
	BootStackAddr uint64 = 0x8ff0

	// PML4Addr, PDPTAddr and PDAddr hold the identity page tables for the
	// 64-bit entry (see pagetables.go): one PML4 page, one PDPT page and
	// PDPages page directories of 2 MiB pages.
	PML4Addr uint64 = 0x9000
	PDPTAddr uint64 = 0xa000
	PDAddr   uint64 = 0xb000
	// PDPages page directories map IdentityMapSize: all of the 32-bit
	// address space, so the kernel, initrd, boot structures and the MMIO
	// gap are reachable whatever the RAM size.
	PDPages         = 4
	IdentityMapSize = PDPages << 30

	// CmdlineAddr holds the NUL-terminated kernel command line.
	CmdlineAddr uint64 = 0x20000
	// CmdlineMax is the room reserved for it; the kernel's own limit
	// (cmdline_size, or LinuxCommandLineSize) is usually smaller.
	CmdlineMax = 0x10000
	// LinuxCommandLineSize is COMMAND_LINE_SIZE on x86 Linux, including
	// the NUL: the limit for kernels whose header does not state one
	// (vmlinux through PVH), which would silently truncate a longer line.
	LinuxCommandLineSize = 2048

	// EBDAStart starts the 1 KiB extended BIOS data area PCs reserve at the
	// top of conventional memory. We have no BIOS, but Linux reserves this
	// region by convention, and reporting it keeps the e820 table what
	// every x86 kernel expects.
	EBDAStart uint64 = 0x9fc00
	// LegacyHoleStart..HighMemStart is the VGA window and the BIOS ROM
	// area: never RAM on a PC, reported reserved.
	LegacyHoleStart uint64 = 0xa0000

	// ACPIStart..ACPIEnd is where hypervisor/acpi writes its tables. It
	// is inside the BIOS area (0xE0000-0xFFFFF) that Linux scans for the
	// RSDP when boot_params carries no acpi_rsdp_addr (older kernels,
	// other guests), so the tables are found either way.
	ACPIStart uint64 = 0xe0000
	ACPIEnd   uint64 = 0x100000

	// HighMemStart is 1 MiB: the first address where a kernel may be
	// loaded. vmlinux segments are loaded at their own physical addresses
	// (16 MiB for a default Linux build) and must not start below this.
	HighMemStart uint64 = 0x100000

	// MMIOGapStart..MMIOGapEnd is kept free of RAM for device MMIO
	// (virtio-mmio windows). RAM beyond MMIOGapStart continues at
	// MMIOGapEnd (4 GiB), as on real machines.
	MMIOGapStart uint64 = 0xd0000000
	MMIOGapEnd   uint64 = 1 << 32

	// PageSize is the alignment of initrd placement.
	PageSize = 0x1000
)

// MemoryRegion is one contiguous piece of guest RAM: Size bytes at guest
// physical address GuestAddr, backed by the host buffer starting at Offset.
type MemoryRegion struct {
	GuestAddr uint64
	Size      uint64
	Offset    uint64
}

// MemoryRegions splits memSize bytes of RAM around the MMIO gap: the part
// below MMIOGapStart at guest address 0, the rest at 4 GiB. The caller
// registers one KVM memory slot per region, backed by one host buffer.
func MemoryRegions(memSize uint64) []MemoryRegion {
	if memSize <= MMIOGapStart {
		return []MemoryRegion{{GuestAddr: 0, Size: memSize, Offset: 0}}
	}
	return []MemoryRegion{
		{GuestAddr: 0, Size: MMIOGapStart, Offset: 0},
		{GuestAddr: MMIOGapEnd, Size: memSize - MMIOGapStart, Offset: MMIOGapStart},
	}
}

// lowMemEnd is the end of the RAM below the MMIO gap: the only RAM the
// loader writes to, so that guest addresses equal buffer offsets.
func lowMemEnd(memSize uint64) uint64 {
	return min(memSize, MMIOGapStart)
}
