package boot

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

const testMem = 64 << 20

func filled(n int) []byte {
	m := make([]byte, n)
	for i := range m {
		m[i] = 0xaa
	}
	return m
}

func TestStructSizes(t *testing.T) {
	for _, c := range []struct {
		name string
		got  int
		want int
	}{
		{"boot_params", binary.Size(BootParams{}), 4096},
		{"setup_header", binary.Size(SetupHeader{}), 0x26c - 0x1f1},
		{"boot_e820_entry", binary.Size(E820Entry{}), 20},
		{"hvm_start_info", binary.Size(HVMStartInfo{}), 56},
		{"hvm_modlist_entry", binary.Size(HVMModlistEntry{}), 32},
		{"hvm_memmap_table_entry", binary.Size(HVMMemmapEntry{}), 24},
	} {
		if c.got != c.want {
			t.Errorf("%s is %d bytes, want %d", c.name, c.got, c.want)
		}
	}
}

func TestE820Table(t *testing.T) {
	low := []E820Entry{
		{0, 0x9fc00, E820RAM},
		{0x9fc00, 0x400, E820Reserved},
		{0xa0000, 0x60000, E820Reserved},
	}
	for _, c := range []struct {
		mem  uint64
		want []E820Entry
	}{
		{64 << 20, append(low[:3:3], E820Entry{0x100000, 64<<20 - 0x100000, E820RAM})},
		{MMIOGapStart, append(low[:3:3], E820Entry{0x100000, MMIOGapStart - 0x100000, E820RAM})},
		{5 << 30, append(low[:3:3],
			E820Entry{0x100000, MMIOGapStart - 0x100000, E820RAM},
			E820Entry{1 << 32, 5<<30 - MMIOGapStart, E820RAM})},
	} {
		got := E820Table(c.mem)
		if len(got) != len(c.want) {
			t.Errorf("E820Table(%#x) = %+v, want %+v", c.mem, got, c.want)
			continue
		}
		var total uint64
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("E820Table(%#x)[%d] = %+v, want %+v", c.mem, i, got[i], c.want[i])
			}
			if got[i].Type == E820RAM {
				total += got[i].Size
			}
		}
		// All RAM but the EBDA and the legacy hole is reported.
		if want := c.mem - (HighMemStart - EBDAStart); total != want {
			t.Errorf("E820Table(%#x) reports %#x bytes of RAM, want %#x", c.mem, total, want)
		}
	}
}

func TestMemoryRegions(t *testing.T) {
	if got := MemoryRegions(1 << 30); len(got) != 1 || got[0] != (MemoryRegion{0, 1 << 30, 0}) {
		t.Errorf("MemoryRegions(1G) = %+v", got)
	}
	got := MemoryRegions(5 << 30)
	want := []MemoryRegion{{0, MMIOGapStart, 0}, {1 << 32, 5<<30 - MMIOGapStart, MMIOGapStart}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("MemoryRegions(5G) = %+v, want %+v", got, want)
	}
}

func TestLoadBzImage(t *testing.T) {
	mem := filled(testMem)
	img := testBzImage(0x10000)
	initrd := []byte(strings.Repeat("initrd!", 1000))
	cmdline := "console=ttyS0 lpj=1000000"
	e, err := Load(mem, Config{Kernel: img, Initrd: initrd, Cmdline: cmdline, RSDP: 0xe0000})
	if err != nil {
		t.Fatal(err)
	}
	wantInitrd := uint64(testMem-len(initrd)) &^ 0xfff
	if e.Protocol != ProtocolLinux64 || e.KernelStart != 0x1000000 || e.KernelEnd != 0x1400000 ||
		e.InitrdAddr != wantInitrd || e.InitrdSize != uint64(len(initrd)) {
		t.Errorf("entry = %+v", e)
	}
	wantRegs := kvm.Regs{RIP: 0x1000200, RSI: 0x7000, RSP: 0x8ff0, RBP: 0x8ff0, RFLAGS: 2}
	if e.Regs != wantRegs {
		t.Errorf("regs = %+v, want %+v", e.Regs, wantRegs)
	}
	if string(mem[0x1000000:0x1010000]) != string(img[1024:]) {
		t.Error("protected-mode kernel not at 0x1000000")
	}
	if string(mem[wantInitrd:wantInitrd+uint64(len(initrd))]) != string(initrd) {
		t.Error("initrd not where the entry says")
	}
	if got := string(mem[0x20000 : 0x20000+len(cmdline)+1]); got != cmdline+"\x00" {
		t.Errorf("cmdline = %q", got)
	}

	zp := mem[0x7000:0x8000]
	le := binary.LittleEndian
	for _, c := range []struct {
		what string
		off  int
		size int
		want uint64
	}{
		{"acpi_rsdp_addr", 0x070, 8, 0xe0000},
		{"e820_entries", 0x1e8, 1, 4},
		{"sentinel", 0x1ef, 1, 0},
		{"setup_sects", 0x1f1, 1, 1},
		{"syssize", 0x1f4, 4, 0x1000},
		{"boot_flag", 0x1fe, 2, 0xaa55},
		{"jump", 0x200, 2, 0x6aeb},
		{"header", 0x202, 4, 0x53726448},
		{"version", 0x206, 2, 0x020f},
		{"type_of_loader", 0x210, 1, 0xff},
		{"loadflags", 0x211, 1, 0x81},
		{"ramdisk_image", 0x218, 4, wantInitrd},
		{"ramdisk_size", 0x21c, 4, uint64(len(initrd))},
		{"heap_end_ptr", 0x224, 2, 0xfc00},
		{"cmd_line_ptr", 0x228, 4, 0x20000},
		{"initrd_addr_max", 0x22c, 4, 0x7fffffff},
		{"xloadflags", 0x236, 2, 3},
		{"cmdline_size", 0x238, 4, 2047},
		{"pref_address", 0x258, 8, 0x1000000},
		{"init_size", 0x260, 4, 0x400000},
		{"e820[0].addr", 0x2d0, 8, 0},
		{"e820[0].size", 0x2d8, 8, 0x9fc00},
		{"e820[0].type", 0x2e0, 4, 1},
		{"e820[1].addr", 0x2e4, 8, 0x9fc00},
		{"e820[1].size", 0x2ec, 8, 0x400},
		{"e820[1].type", 0x2f4, 4, 2},
		{"e820[2].addr", 0x2f8, 8, 0xa0000},
		{"e820[2].size", 0x300, 8, 0x60000},
		{"e820[2].type", 0x308, 4, 2},
		{"e820[3].addr", 0x30c, 8, 0x100000},
		{"e820[3].size", 0x314, 8, testMem - 0x100000},
		{"e820[3].type", 0x31c, 4, 1},
		{"e820[4].type", 0x330, 4, 0},
	} {
		var got uint64
		switch c.size {
		case 1:
			got = uint64(zp[c.off])
		case 2:
			got = uint64(le.Uint16(zp[c.off:]))
		case 4:
			got = uint64(le.Uint32(zp[c.off:]))
		case 8:
			got = le.Uint64(zp[c.off:])
		}
		if got != c.want {
			t.Errorf("zero page %s at %#x = %#x, want %#x", c.what, c.off, got, c.want)
		}
	}
	if string(zp[0x202:0x206]) != "HdrS" {
		t.Errorf("HdrS at 0x202: %q", zp[0x202:0x206])
	}
	// Everything outside the fields above is zero (the 0xaa fill is gone).
	for _, r := range [][2]int{{0, 0x70}, {0x78, 0x1e8}, {0x26c, 0x2d0}, {0x334, 0x1000}} {
		for i := r[0]; i < r[1]; i++ {
			if zp[i] != 0 {
				t.Fatalf("zero page byte %#x = %#x, want 0", i, zp[i])
			}
		}
	}

	var s kvm.Sregs
	s.APICBase = 0xfee00900
	e.SetupSregs(&s)
	code := kvm.Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0xb, Present: 1, L: 1, S: 1, G: 1}
	data := kvm.Segment{Limit: 0xffffffff, Selector: 0x18, Type: 0x3, Present: 1, DB: 1, S: 1, G: 1}
	if s.CS != code || s.DS != data || s.SS != data || s.ES != data {
		t.Errorf("segments CS %+v DS %+v SS %+v", s.CS, s.DS, s.SS)
	}
	if s.CR0 != 0x80000011 || s.CR3 != 0x9000 || s.CR4 != 0x20 || s.EFER != 0x500 {
		t.Errorf("CR0 %#x CR3 %#x CR4 %#x EFER %#x", s.CR0, s.CR3, s.CR4, s.EFER)
	}
	if s.GDT.Base != 0x500 || s.GDT.Limit != 39 || s.IDT.Base != 0x540 || s.IDT.Limit != 7 {
		t.Errorf("GDTR %+v IDTR %+v", s.GDT, s.IDT)
	}
	if s.APICBase != 0xfee00900 {
		t.Error("SetupSregs changed a field boot does not own")
	}
	if le.Uint64(mem[0x9000:]) != 0xa003 || le.Uint64(mem[0x500+16:]) != 0x00af9b000000ffff {
		t.Error("page tables or GDT missing from guest memory")
	}
}

func TestLoadPVH(t *testing.T) {
	mem := filled(testMem)
	initrd := make([]byte, 0x1800)
	initrd[0] = 0x1f
	e, err := Load(mem, Config{Kernel: testVmlinux(true), Initrd: initrd, Cmdline: "console=ttyS0", RSDP: 0xe0000})
	if err != nil {
		t.Fatal(err)
	}
	wantInitrd := uint64(testMem - 0x2000)
	if e.Protocol != ProtocolPVH || e.KernelStart != 0x1000000 || e.KernelEnd != 0x1005000 || e.InitrdAddr != wantInitrd {
		t.Errorf("entry = %+v", e)
	}
	if want := (kvm.Regs{RIP: 0x1000040, RBX: 0x6000, RFLAGS: 2}); e.Regs != want {
		t.Errorf("regs = %+v, want %+v", e.Regs, want)
	}
	if mem[0x1000001] != 3 || mem[0x1001fff] != byte(0x1fff*3%256) {
		t.Error("text segment not loaded at its physical address")
	}
	for i := 0x1002000; i < 0x1005000; i++ {
		if mem[i] != 0 {
			t.Fatalf("bss byte %#x = %#x, want 0", i, mem[i])
		}
	}
	if mem[0x1005000] != 0xaa {
		t.Error("loader wrote past the segment's memory size")
	}
	u := func(h string) []byte {
		var b []byte
		for _, f := range strings.Fields(h) {
			var v byte
			for _, c := range f {
				v = v<<4 | byte(strings.IndexRune("0123456789abcdef", c))
			}
			b = append(b, v)
		}
		return b
	}
	wantInfo := u(`78 c5 6e 33  01 00 00 00  00 00 00 00  01 00 00 00
		40 60 00 00 00 00 00 00  00 00 02 00 00 00 00 00
		00 00 0e 00 00 00 00 00  80 60 00 00 00 00 00 00
		04 00 00 00 00 00 00 00`)
	if got := mem[0x6000:0x6038]; string(got) != string(wantInfo) {
		t.Errorf("hvm_start_info:\n% x\nwant\n% x", got, wantInfo)
	}
	wantMod := u(`00 e0 ff 03 00 00 00 00  00 18 00 00 00 00 00 00
		00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00`)
	if got := mem[0x6040:0x6060]; string(got) != string(wantMod) {
		t.Errorf("hvm_modlist_entry:\n% x\nwant\n% x", got, wantMod)
	}
	wantMap := u(`00 00 00 00 00 00 00 00  00 fc 09 00 00 00 00 00  01 00 00 00 00 00 00 00
		00 fc 09 00 00 00 00 00  00 04 00 00 00 00 00 00  02 00 00 00 00 00 00 00
		00 00 0a 00 00 00 00 00  00 00 06 00 00 00 00 00  02 00 00 00 00 00 00 00
		00 00 10 00 00 00 00 00  00 00 f0 03 00 00 00 00  01 00 00 00 00 00 00 00`)
	if got := mem[0x6080 : 0x6080+96]; string(got) != string(wantMap) {
		t.Errorf("memmap:\n% x\nwant\n% x", got, wantMap)
	}
	if string(mem[0x20000:0x2000e]) != "console=ttyS0\x00" {
		t.Error("cmdline missing")
	}
	if mem[wantInitrd] != 0x1f {
		t.Error("initrd missing")
	}
	// PVH needs no page tables and no zero page; they are not written.
	if mem[0x9000] != 0xaa || mem[0x7000] != 0xaa {
		t.Error("PVH load wrote page tables or a zero page")
	}

	var s kvm.Sregs
	s.CR0 = 0x60000010 // KVM's reset value: CD and NW are cleared too
	e.SetupSregs(&s)
	code := kvm.Segment{Limit: 0xffffffff, Selector: 0x08, Type: 0xb, Present: 1, DB: 1, S: 1, G: 1}
	data := kvm.Segment{Limit: 0xffffffff, Selector: 0x18, Type: 0x3, Present: 1, DB: 1, S: 1, G: 1}
	tr := kvm.Segment{Limit: 0x67, Selector: 0x20, Type: 0xb, Present: 1}
	if s.CS != code || s.DS != data || s.ES != data || s.SS != data || s.TR != tr {
		t.Errorf("CS %+v DS %+v TR %+v", s.CS, s.DS, s.TR)
	}
	if s.CR0 != 0x11 || s.CR3 != 0 || s.CR4 != 0 || s.EFER != 0 {
		t.Errorf("CR0 %#x CR3 %#x CR4 %#x EFER %#x", s.CR0, s.CR3, s.CR4, s.EFER)
	}
}

func TestLoadELFWithoutPVHNote(t *testing.T) {
	mem := filled(testMem)
	e, err := Load(mem, Config{Kernel: testVmlinux(false), Cmdline: "quiet"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolLinux64 || e.Regs.RIP != 0x1000000 || e.Regs.RSI != ZeroPageAddr {
		t.Errorf("entry = %+v", e)
	}
	zp := mem[0x7000:]
	if string(zp[0x202:0x206]) != "HdrS" || zp[0x210] != 0xff || zp[0x1e8] != 4 ||
		binary.LittleEndian.Uint32(zp[0x228:]) != 0x20000 || binary.LittleEndian.Uint64(zp[0x70:]) != 0 {
		t.Error("synthesized zero page wrong")
	}
}

func TestLoadFromPath(t *testing.T) {
	dir := t.TempDir()
	kpath := filepath.Join(dir, "vmlinux")
	ipath := filepath.Join(dir, "initrd.gz")
	if err := os.WriteFile(kpath, testVmlinux(true), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ipath, []byte("rd"), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := Load(make([]byte, testMem), Config{KernelPath: kpath, InitrdPath: ipath})
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != ProtocolPVH || e.InitrdSize != 2 {
		t.Errorf("entry = %+v", e)
	}
	_, err = Load(make([]byte, testMem), Config{KernelPath: filepath.Join(dir, "missing")})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: err = %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	bz := testBzImage(0x10000)
	mod := func(f func(b []byte)) []byte {
		b := append([]byte(nil), bz...)
		f(b)
		return b
	}
	le := binary.LittleEndian
	for _, c := range []struct {
		name    string
		mem     int
		cfg     Config
		wantErr string
	}{
		{"empty", testMem, Config{Kernel: []byte{}}, "no kernel image"},
		{"garbage", testMem, Config{Kernel: make([]byte, 4096)}, "neither an ELF vmlinux nor a bzImage"},
		{"truncated bzImage", testMem, Config{Kernel: bz[:len(bz)-100]}, "truncated"},
		{"truncated header", testMem, Config{Kernel: bz[:0x220]}, "truncated"},
		{"no boot flag", testMem, Config{Kernel: mod(func(b []byte) { b[0x1fe] = 0 })}, "boot_flag"},
		{"old protocol", testMem, Config{Kernel: mod(func(b []byte) { le.PutUint16(b[0x206:], 0x020b) })}, "need 2.12"},
		{"no 64-bit entry", testMem, Config{Kernel: mod(func(b []byte) { le.PutUint16(b[0x236:], 0) })}, "XLF_KERNEL_64"},
		{"kernel bigger than RAM", 8 << 20, Config{Kernel: bz}, "kernel bigger than RAM"},
		{"huge init_size", testMem, Config{Kernel: mod(func(b []byte) { le.PutUint32(b[0x260:], 0xf0000000) })}, "kernel bigger than RAM"},
		{"initrd does not fit", testMem, Config{Kernel: bz, Initrd: make([]byte, testMem-0x1000000)}, "initrd of"},
		{"initrd above initrd_addr_max", testMem, Config{Kernel: mod(func(b []byte) { le.PutUint32(b[0x22c:], 0x13fffff) }), Initrd: []byte{1}}, "does not fit"},
		{"cmdline too long", testMem, Config{Kernel: mod(func(b []byte) { le.PutUint32(b[0x238:], 16) }), Cmdline: strings.Repeat("x", 17)}, "cmdline_size of 16"},
		{"cmdline too long for PVH", testMem, Config{Kernel: testVmlinux(true), Cmdline: strings.Repeat("x", 2048)}, "cmdline_size of 2047"},
		{"cmdline NUL", testMem, Config{Kernel: bz, Cmdline: "a\x00b"}, "NUL"},
		{"memory too small", 1 << 20, Config{Kernel: bz}, "too small"},
		{"MemSize beyond buffer", testMem, Config{Kernel: bz, MemSize: testMem + 1}, "larger than"},
		{"truncated ELF", testMem, Config{Kernel: testVmlinux(true)[:0x100]}, "truncated"},
		{"ELF below 1 MiB", testMem, Config{Kernel: testELF(0x1000, []testSeg{{paddr: 0x1000, data: []byte{1}, memsz: 1}})}, "below 0x100000"},
		{"ELF bigger than RAM", 32 << 20, Config{Kernel: testELF(0x1000000, []testSeg{{paddr: 0x1000000, data: []byte{1}, memsz: 32 << 20}})}, "kernel bigger than RAM"},
		{"ELF entry outside", testMem, Config{Kernel: testELF(0x5000000, []testSeg{{paddr: 0x1000000, data: []byte{1}, memsz: 1}})}, "entry point"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.KernelPath = "/images/k1"
			if c.cfg.Kernel == nil {
				t.Fatal("test case without kernel bytes")
			}
			_, err := Load(make([]byte, c.mem), c.cfg)
			if err == nil {
				t.Fatalf("no error, want one containing %q", c.wantErr)
			}
			if !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), "load kernel /images/k1") {
				t.Errorf("error %q, want it to name the file and contain %q", err, c.wantErr)
			}
		})
	}
}
