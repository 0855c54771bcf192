package boot

import (
	"encoding/binary"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

func TestGDTEntryEncodings(t *testing.T) {
	// The exact descriptors Linux's own boot GDT uses (head_64.S), except
	// that ours have the accessed bit preset (9b/93 instead of 9a/92).
	want := [5]uint64{
		0,
		0x00cf9b000000ffff, // flat 32-bit code
		0x00af9b000000ffff, // flat 64-bit code
		0x00cf93000000ffff, // flat data
		0x00008b0000000067, // busy TSS, base 0, limit 0x67
	}
	if got := BootGDT(); got != want {
		t.Fatalf("BootGDT() =\n%#016x\nwant\n%#016x", got, want)
	}
	// Base and limit bits land where the descriptor format puts them.
	if got, want := GDTEntry(0x809b, 0x12345678, 0xabcde), uint64(0x128a9b345678bcde); got != want {
		t.Errorf("GDTEntry(base 0x12345678, limit 0xabcde) = %#016x, want %#016x", got, want)
	}
}

func TestGDTInMemory(t *testing.T) {
	mem := make([]byte, 0x1000)
	for i := range mem {
		mem[i] = 0xaa
	}
	if err := writeGDT(mem); err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0, 0, 0, 0, 0, 0, 0, 0,
		0xff, 0xff, 0, 0, 0, 0x9b, 0xcf, 0x00,
		0xff, 0xff, 0, 0, 0, 0x9b, 0xaf, 0x00,
		0xff, 0xff, 0, 0, 0, 0x93, 0xcf, 0x00,
		0x67, 0x00, 0, 0, 0, 0x8b, 0x00, 0x00,
	}
	if got := mem[GDTAddr : GDTAddr+40]; string(got) != string(want) {
		t.Errorf("GDT bytes at %#x:\n% x\nwant\n% x", GDTAddr, got, want)
	}
	if got := binary.LittleEndian.Uint64(mem[IDTAddr:]); got != 0 {
		t.Errorf("IDT = %#x, want 0", got)
	}
}

func TestSegmentFromGDT(t *testing.T) {
	gdt := BootGDT()
	for _, tc := range []struct {
		name string
		got  kvm.Segment
		want kvm.Segment
	}{
		{"code32", SegmentFromGDT(gdt[1], 0x08), kvm.Segment{Limit: 0xffffffff, Selector: 0x08, Type: 0xb, Present: 1, DB: 1, S: 1, G: 1}},
		{"code64", SegmentFromGDT(gdt[2], 0x10), kvm.Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0xb, Present: 1, L: 1, S: 1, G: 1}},
		{"data", SegmentFromGDT(gdt[3], 0x18), kvm.Segment{Limit: 0xffffffff, Selector: 0x18, Type: 0x3, Present: 1, DB: 1, S: 1, G: 1}},
		{"tss", SegmentFromGDT(gdt[4], 0x20), kvm.Segment{Limit: 0x67, Selector: 0x20, Type: 0xb, Present: 1}},
		{"null", SegmentFromGDT(0, 0), kvm.Segment{Unusable: 1}},
		{"base/dpl/avl", SegmentFromGDT(GDTEntry(0x10f3, 0x12345678, 0x1234), 0x2b),
			kvm.Segment{Base: 0x12345678, Limit: 0x1234, Selector: 0x2b, Type: 0x3, Present: 1, DPL: 3, S: 1, AVL: 1}},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %+v\nwant %+v", tc.name, tc.got, tc.want)
		}
	}
}

func TestPageTables(t *testing.T) {
	mem := make([]byte, 0x10000)
	for i := range mem {
		mem[i] = 0xaa
	}
	if err := writePageTables(mem); err != nil {
		t.Fatal(err)
	}
	u64 := func(addr uint64) uint64 { return binary.LittleEndian.Uint64(mem[addr:]) }
	for _, c := range []struct {
		what       string
		addr, want uint64
	}{
		{"PML4[0]", PML4Addr, 0xa003},
		{"PML4[1]", PML4Addr + 8, 0},
		{"PDPT[0]", PDPTAddr, 0xb003},
		{"PDPT[1]", PDPTAddr + 8, 0xc003},
		{"PDPT[3]", PDPTAddr + 24, 0xe003},
		{"PDPT[4]", PDPTAddr + 32, 0},
		{"PD0[0]", PDAddr, 0x83},
		{"PD0[1]", PDAddr + 8, 0x200083},
		{"PD0[511]", PDAddr + 511*8, 0x3fe00083},
		{"PD1[0]", PDAddr + 0x1000, 0x40000083},
		{"PD3[511]", PDAddr + 0x3000 + 511*8, 0xffe00083},
	} {
		if got := u64(c.addr); got != c.want {
			t.Errorf("%s at %#x = %#x, want %#x", c.what, c.addr, got, c.want)
		}
	}
	if got := mem[PML4Addr : PML4Addr+8]; string(got) != "\x03\xa0\x00\x00\x00\x00\x00\x00" {
		t.Errorf("PML4[0] bytes % x", got)
	}
	if mem[PDAddr+PDPages*PageSize] != 0xaa || mem[PML4Addr-1] != 0xaa {
		t.Error("page tables written outside their pages")
	}
}

func TestPageTablesSmallMemory(t *testing.T) {
	if err := writePageTables(make([]byte, 0xc000)); err == nil {
		t.Error("no error for memory too small to hold the page tables")
	}
}

func TestLowLayoutDoesNotOverlap(t *testing.T) {
	type area struct {
		name       string
		start, end uint64
	}
	areas := []area{
		{"GDT", GDTAddr, GDTAddr + uint64(len(BootGDT()))*8},
		{"IDT", IDTAddr, IDTAddr + 8},
		{"PVH start info", PVHStartInfoAddr, PVHStartInfoAddr + 56},
		{"PVH modlist", PVHModlistAddr, PVHModlistAddr + 32},
		{"PVH memmap", PVHMemmapAddr, ZeroPageAddr},
		{"zero page", ZeroPageAddr, ZeroPageAddr + PageSize},
		{"boot stack", ZeroPageAddr + PageSize, BootStackAddr + 16},
		{"page tables", PML4Addr, PDAddr + PDPages*PageSize},
		{"cmdline", CmdlineAddr, CmdlineAddr + CmdlineMax},
		{"EBDA", EBDAStart, LegacyHoleStart},
		{"ACPI", ACPIStart, ACPIEnd},
	}
	for i, a := range areas {
		if a.start >= a.end {
			t.Errorf("%s empty", a.name)
		}
		for _, b := range areas[i+1:] {
			if a.start < b.end && b.start < a.end {
				t.Errorf("%s [%#x,%#x) overlaps %s [%#x,%#x)", a.name, a.start, a.end, b.name, b.start, b.end)
			}
		}
	}
	if CmdlineAddr+CmdlineMax > EBDAStart {
		t.Error("cmdline area reaches the EBDA")
	}
}
