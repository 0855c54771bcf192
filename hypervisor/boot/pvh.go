package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// PVH boot ABI (Xen's docs/misc/pvh.pandoc, xen/include/public/arch-x86/
// hvm/start_info.h; Linux's arch/x86/platform/pvh). Linux accepts it without
// Xen: when CPUID shows no Xen leaves it takes the memory map from the start
// info instead of a hypercall.
const (
	// XenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the note whose
	// descriptor is the 32-bit physical PVH entry point.
	XenElfnotePhys32Entry = 18
	// PVHStartMagic is XEN_HVM_START_MAGIC_VALUE.
	PVHStartMagic = 0x336ec578
	// pvhStartVersion 1 has the memory map fields.
	pvhStartVersion = 1
)

// HVMStartInfo is struct hvm_start_info (version 1), 56 bytes.
type HVMStartInfo struct {
	Magic         uint32 // 0x00
	Version       uint32 // 0x04
	Flags         uint32 // 0x08
	NrModules     uint32 // 0x0c
	ModlistPaddr  uint64 // 0x10
	CmdlinePaddr  uint64 // 0x18
	RSDPPaddr     uint64 // 0x20
	MemmapPaddr   uint64 // 0x28
	MemmapEntries uint32 // 0x30
	_             uint32 // 0x34
}

// HVMModlistEntry is struct hvm_modlist_entry, 32 bytes.
type HVMModlistEntry struct {
	Paddr        uint64
	Size         uint64
	CmdlinePaddr uint64
	_            uint64
}

// HVMMemmapEntry is struct hvm_memmap_table_entry, 24 bytes. Its types
// are the e820 types (XEN_HVM_MEMMAP_TYPE_RAM = 1, RESERVED = 2, ...).
type HVMMemmapEntry struct {
	Addr uint64
	Size uint64
	Type uint32
	_    uint32
}

// elfSegment is a PT_LOAD segment: data[Off:Off+Filesz] at guest physical
// Paddr, zero-filled up to Memsz.
type elfSegment struct {
	paddr, off, filesz, memsz uint64
}

// elfKernel is what the loader needs from a vmlinux.
type elfKernel struct {
	segments []elfSegment
	entry    uint64 // e_entry: the 64-bit entry (startup_64), physical
	pvhEntry uint64 // from the PVH note; valid if hasPVH
	hasPVH   bool
}

// parseELF reads the program headers of an x86-64 ELF kernel and its PVH
// note. It checks every segment against the file so loading cannot read
// out of bounds; it does not know the RAM size (load does that check).
func parseELF(data []byte) (*elfKernel, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parse ELF: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("ELF is %v %v, want ELFCLASS64 EM_X86_64", f.Class, f.Machine)
	}
	k := &elfKernel{entry: f.Entry}
	for i, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			if p.Filesz > p.Memsz {
				return nil, fmt.Errorf("segment %d: file size %#x exceeds memory size %#x", i, p.Filesz, p.Memsz)
			}
			if p.Off > uint64(len(data)) || p.Filesz > uint64(len(data))-p.Off {
				return nil, fmt.Errorf("segment %d: %#x bytes at offset %#x beyond end of file (%d bytes): truncated?", i, p.Filesz, p.Off, len(data))
			}
			if p.Paddr+p.Memsz < p.Paddr {
				return nil, fmt.Errorf("segment %d: address %#x + size %#x overflows", i, p.Paddr, p.Memsz)
			}
			if p.Memsz > 0 {
				k.segments = append(k.segments, elfSegment{paddr: p.Paddr, off: p.Off, filesz: p.Filesz, memsz: p.Memsz})
			}
		case elf.PT_NOTE:
			if p.Off > uint64(len(data)) || p.Filesz > uint64(len(data))-p.Off {
				return nil, fmt.Errorf("note segment %d beyond end of file: truncated?", i)
			}
			entry, ok, err := findPVHNote(data[p.Off : p.Off+p.Filesz])
			if err != nil {
				return nil, fmt.Errorf("note segment %d: %w", i, err)
			}
			if ok {
				k.pvhEntry, k.hasPVH = entry, true
			}
		}
	}
	if len(k.segments) == 0 {
		return nil, errors.New("ELF has no loadable segments")
	}
	return k, nil
}

// findPVHNote scans ELF notes (Elf64_Nhdr: namesz, descsz, type, then name
// and descriptor each padded to 4 bytes) for the Xen PHYS32_ENTRY note.
func findPVHNote(b []byte) (entry uint64, ok bool, err error) {
	for len(b) > 0 {
		if len(b) < 12 {
			return 0, false, fmt.Errorf("truncated note header (%d bytes)", len(b))
		}
		namesz := uint64(binary.LittleEndian.Uint32(b[0:]))
		descsz := uint64(binary.LittleEndian.Uint32(b[4:]))
		typ := binary.LittleEndian.Uint32(b[8:])
		descOff := 12 + align4(namesz)
		end := descOff + align4(descsz)
		if end > uint64(len(b)) {
			// Padding of the last note may be missing; the data may not.
			if descOff+descsz > uint64(len(b)) {
				return 0, false, fmt.Errorf("note of %d+%d bytes overruns its segment", namesz, descsz)
			}
			end = uint64(len(b))
		}
		name := b[12 : 12+namesz]
		desc := b[descOff : descOff+descsz]
		if typ == XenElfnotePhys32Entry && string(bytes.TrimRight(name, "\x00")) == "Xen" {
			switch descsz {
			case 4:
				return uint64(binary.LittleEndian.Uint32(desc)), true, nil
			case 8:
				return binary.LittleEndian.Uint64(desc), true, nil
			default:
				return 0, false, fmt.Errorf("PVH entry note has a %d-byte descriptor, want 4 or 8", descsz)
			}
		}
		b = b[end:]
	}
	return 0, false, nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// loadSegments copies the PT_LOAD segments to their physical addresses and
// returns the lowest and highest address used.
func (k *elfKernel) loadSegments(data, low []byte) (start, end uint64, err error) {
	start = ^uint64(0)
	for _, s := range k.segments {
		if s.paddr < HighMemStart {
			return 0, 0, fmt.Errorf("segment at %#x is below %#x, over the loader's boot structures", s.paddr, HighMemStart)
		}
		if s.paddr+s.memsz > uint64(len(low)) {
			return 0, 0, fmt.Errorf("segment at %#x of %#x bytes does not fit in %#x bytes of RAM: kernel bigger than RAM", s.paddr, s.memsz, len(low))
		}
		copy(low[s.paddr:], data[s.off:s.off+s.filesz])
		clear(low[s.paddr+s.filesz : s.paddr+s.memsz])
		start = min(start, s.paddr)
		end = max(end, s.paddr+s.memsz)
	}
	return start, end, nil
}

// writePVHStartInfo writes hvm_start_info, the initrd's module entry and
// the memory map.
func writePVHStartInfo(low []byte, memSize uint64, cmdline bool, initrdAddr, initrdSize, rsdp uint64) error {
	e820 := E820Table(memSize)
	memmap := make([]HVMMemmapEntry, len(e820))
	for i, e := range e820 {
		memmap[i] = HVMMemmapEntry{Addr: e.Addr, Size: e.Size, Type: e.Type}
	}
	if PVHMemmapAddr+uint64(len(memmap))*24 > ZeroPageAddr {
		return fmt.Errorf("PVH memory map of %d entries overflows its area", len(memmap))
	}
	info := HVMStartInfo{
		Magic:         PVHStartMagic,
		Version:       pvhStartVersion,
		RSDPPaddr:     rsdp,
		MemmapPaddr:   PVHMemmapAddr,
		MemmapEntries: uint32(len(memmap)),
	}
	if cmdline {
		info.CmdlinePaddr = CmdlineAddr
	}
	if initrdSize > 0 {
		info.NrModules = 1
		info.ModlistPaddr = PVHModlistAddr
		if err := putStruct(low, PVHModlistAddr, HVMModlistEntry{Paddr: initrdAddr, Size: initrdSize}); err != nil {
			return err
		}
	}
	if err := putStruct(low, PVHMemmapAddr, memmap); err != nil {
		return err
	}
	return putStruct(low, PVHStartInfoAddr, info)
}

// putStruct encodes v little endian at guest address addr.
func putStruct(low []byte, addr uint64, v any) error {
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
		return fmt.Errorf("encode %T: %w", v, err)
	}
	if addr+uint64(buf.Len()) > uint64(len(low)) {
		return fmt.Errorf("%T at %#x beyond guest memory", v, addr)
	}
	copy(low[addr:], buf.Bytes())
	return nil
}

// pvhRegs is the PVH entry state for general registers: EBX points at the
// start info; EFLAGS has only the always-one bit, so IF, TF and VM are
// clear as the ABI requires.
func pvhRegs(entry uint64) kvm.Regs {
	return kvm.Regs{RIP: entry, RBX: PVHStartInfoAddr, RFLAGS: rflagsReserved}
}

// pvhSregs is the PVH entry state: 32-bit protected mode, paging off, CS a
// flat 32-bit code segment, DS/ES/SS (and FS/GS) flat data, TR a 32-bit TSS
// with base 0 and limit 0x67, CR0 with only PE (and ET, which is
// read-only 1), CR4 zero.
func pvhSregs(s *kvm.Sregs) {
	gdt := BootGDT()
	setGDTRegisters(s)
	s.CS = SegmentFromGDT(gdt[SelectorCode32/8], SelectorCode32)
	data := SegmentFromGDT(gdt[SelectorData/8], SelectorData)
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = SegmentFromGDT(gdt[SelectorTSS/8], SelectorTSS)
	s.CR0 = cr0PE | cr0ET
	s.CR3 = 0
	s.CR4 = 0
	s.EFER = 0
}
