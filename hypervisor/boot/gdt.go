package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// The boot GDT follows the layout of Linux's own boot GDT
// (arch/x86/boot/compressed/head_64.S), because the 64-bit boot protocol
// (Documentation/arch/x86/boot.rst) requires __BOOT_CS = 0x10 and
// __BOOT_DS = 0x18, and PVH needs a flat 32-bit code segment besides.
const (
	// Selector of each entry: index*8, RPL 0, GDT.
	SelectorCode32 uint16 = 0x08
	SelectorCode64 uint16 = 0x10
	SelectorData   uint16 = 0x18
	SelectorTSS    uint16 = 0x20
)

// Descriptor access/flags words for GDTEntry, as bits 8-15 (access byte)
// and 12-15 of the high word (G, D/B, L, AVL) in one 16-bit value. The
// accessed bit is preset in every type so the CPU never writes to the GDT
// (it may live in memory the kernel reuses).
const (
	flagsCode32 = 0xc09b // G, D=32-bit; present, DPL0, code exec/read, accessed
	flagsCode64 = 0xa09b // G, L=64-bit; present, DPL0, code exec/read, accessed
	flagsData   = 0xc093 // G, B=32-bit; present, DPL0, data read/write, accessed
	flagsTSS    = 0x008b // byte granular; present, system, busy 32/64-bit TSS
)

// tssLimit is the size of a 32-bit TSS minus one, as the PVH ABI requires
// for TR (base 0, limit 0x67). The TSS itself is never used: no privilege
// change or task switch happens before the kernel loads its own.
const tssLimit = 0x67

// GDTEntry encodes a segment descriptor: base and a 20-bit limit scattered
// over the 8 bytes the way the x86 descriptor format lays them out.
func GDTEntry(flags uint16, base, limit uint32) uint64 {
	return uint64(base&0xff000000)<<32 |
		uint64(flags&0xf0ff)<<40 |
		uint64(limit&0x000f0000)<<32 |
		uint64(base&0x00ffffff)<<16 |
		uint64(limit&0x0000ffff)
}

// BootGDT returns the boot GDT: null, flat 32-bit code, flat 64-bit code,
// flat data, TSS placeholder, indexed by selector/8.
func BootGDT() [5]uint64 {
	return [5]uint64{
		0,
		GDTEntry(flagsCode32, 0, 0xfffff),
		GDTEntry(flagsCode64, 0, 0xfffff),
		GDTEntry(flagsData, 0, 0xfffff),
		GDTEntry(flagsTSS, 0, tssLimit),
	}
}

// SegmentFromGDT decodes a descriptor into the segment register state KVM
// loads, as the CPU would when the selector is loaded. KVM wants the limit
// in bytes, so a page-granular limit is scaled here (VMX refuses a G=1
// segment whose low 12 limit bits are not all ones).
func SegmentFromGDT(entry uint64, selector uint16) kvm.Segment {
	limit := uint32(entry&0xffff) | uint32(entry>>32)&0xf0000
	g := uint8(entry >> 55 & 1)
	if g == 1 {
		limit = limit<<12 | 0xfff
	}
	present := uint8(entry >> 47 & 1)
	return kvm.Segment{
		Base:     (entry>>16)&0xffffff | (entry>>32)&0xff000000,
		Limit:    limit,
		Selector: selector,
		Type:     uint8(entry >> 40 & 0xf),
		S:        uint8(entry >> 44 & 1),
		DPL:      uint8(entry >> 45 & 3),
		Present:  present,
		AVL:      uint8(entry >> 52 & 1),
		L:        uint8(entry >> 53 & 1),
		DB:       uint8(entry >> 54 & 1),
		G:        g,
		Unusable: 1 - present,
	}
}

// writeGDT writes the boot GDT and the empty IDT into guest memory.
func writeGDT(mem []byte) error {
	gdt := BootGDT()
	end := GDTAddr + uint64(len(gdt))*8
	if end > uint64(len(mem)) || IDTAddr+8 > uint64(len(mem)) {
		return fmt.Errorf("write GDT: guest memory of %d bytes too small", len(mem))
	}
	for i, e := range gdt {
		binary.LittleEndian.PutUint64(mem[GDTAddr+uint64(i)*8:], e)
	}
	clear(mem[IDTAddr : IDTAddr+8])
	return nil
}

// setGDTRegisters points GDTR/IDTR at the boot tables.
func setGDTRegisters(s *kvm.Sregs) {
	s.GDT.Base = GDTAddr
	s.GDT.Limit = uint16(len(BootGDT())*8 - 1)
	s.IDT.Base = IDTAddr
	s.IDT.Limit = 7
}
