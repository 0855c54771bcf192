package acpi

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

const testBase = 0xe0000

// tables is a decoder for what Build wrote: it follows the pointers the
// way an OS does (RSDP -> XSDT -> FADT -> FACS, DSDT), checking the
// structure on the way.
type tables struct {
	rsdp, xsdt, fadt, facs, dsdt []byte
}

func decode(t *testing.T, region []byte, base, rsdpAddr uint64) tables {
	t.Helper()
	at := func(addr uint64) []byte {
		if addr < base || addr-base+headerLen > uint64(len(region)) {
			t.Fatalf("pointer %#x outside the region", addr)
		}
		return region[addr-base:]
	}
	table := func(addr uint64, sig string) []byte {
		b := at(addr)
		if string(b[:4]) != sig {
			t.Fatalf("table at %#x has signature %q, want %q", addr, b[:4], sig)
		}
		n := binary.LittleEndian.Uint32(b[4:])
		if uint64(n) > uint64(len(b)) {
			t.Fatalf("%s length %d beyond region", sig, n)
		}
		return b[:n]
	}
	le := binary.LittleEndian
	var tb tables
	tb.rsdp = at(rsdpAddr)[:rsdpLen]
	tb.xsdt = table(le.Uint64(tb.rsdp[24:]), "XSDT")
	if n := (len(tb.xsdt) - headerLen) / 8; n != 1 {
		t.Fatalf("XSDT lists %d tables, want 1 (FADT only, no MADT)", n)
	}
	tb.fadt = table(le.Uint64(tb.xsdt[headerLen:]), "FACP")
	tb.facs = table(uint64(le.Uint32(tb.fadt[36:])), "FACS")
	tb.dsdt = table(uint64(le.Uint32(tb.fadt[40:])), "DSDT")
	if x := le.Uint64(tb.fadt[140:]); x != uint64(le.Uint32(tb.fadt[40:])) {
		t.Errorf("X_DSDT %#x differs from DSDT", x)
	}
	return tb
}

func build(t *testing.T) ([]byte, tables) {
	t.Helper()
	region := bytes.Repeat([]byte{0xaa}, 0x20000)
	rsdp, err := Build(region, testBase)
	if err != nil {
		t.Fatal(err)
	}
	if rsdp != testBase {
		t.Fatalf("RSDP at %#x, want %#x", rsdp, testBase)
	}
	return region, decode(t, region, testBase, rsdp)
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestChecksums(t *testing.T) {
	_, tb := build(t)
	sum := func(b []byte) (s byte) {
		for _, c := range b {
			s += c
		}
		return s
	}
	if s := sum(tb.rsdp[:20]); s != 0 {
		t.Errorf("RSDP first 20 bytes sum to %#x", s)
	}
	for name, b := range map[string][]byte{"RSDP": tb.rsdp, "XSDT": tb.xsdt, "FADT": tb.fadt, "DSDT": tb.dsdt} {
		if s := sum(b); s != 0 {
			t.Errorf("%s sums to %#x, want 0", name, s)
		}
	}
}

func TestRSDPBytes(t *testing.T) {
	_, tb := build(t)
	want := unhex(`52 53 44 20 50 54 52 20  62  46 54 56 4d 20 20  02  00 00 00 00
		24 00 00 00  40 00 0e 00 00 00 00 00  8e  00 00 00`)
	if !bytes.Equal(tb.rsdp, want) {
		t.Errorf("RSDP:\n% x\nwant\n% x", tb.rsdp, want)
	}
}

func TestDSDTBytes(t *testing.T) {
	_, tb := build(t)
	want := unhex(`44 53 44 54  32 00 00 00  02  fd  46 54 56 4d 20 20  46 54 56 4d 41 43 50 49
		01 00 00 00  46 54 56 4d  01 00 00 00
		08 5f 53 35 5f  12 08 04  0a 05  0a 05  00  00`)
	if !bytes.Equal(tb.dsdt, want) {
		t.Errorf("DSDT:\n% x\nwant\n% x", tb.dsdt, want)
	}
}

func TestHeaders(t *testing.T) {
	_, tb := build(t)
	for _, c := range []struct {
		name string
		b    []byte
		len  int
		rev  byte
	}{
		{"XSDT", tb.xsdt, 44, 1},
		{"FACP", tb.fadt, 276, 6},
		{"DSDT", tb.dsdt, 50, 2},
	} {
		le := binary.LittleEndian
		if string(c.b[0:4]) != c.name || int(le.Uint32(c.b[4:])) != c.len || c.b[8] != c.rev ||
			string(c.b[10:16]) != "FTVM  " || string(c.b[16:24]) != "FTVMACPI" ||
			le.Uint32(c.b[24:]) != 1 || string(c.b[28:32]) != "FTVM" || le.Uint32(c.b[32:]) != 1 {
			t.Errorf("%s header: % x", c.name, c.b[:36])
		}
	}
}

func TestFADTFields(t *testing.T) {
	_, tb := build(t)
	f := tb.fadt
	le := binary.LittleEndian
	for _, c := range []struct {
		what string
		off  int
		size int
		want uint64
	}{
		{"FIRMWARE_CTRL", 36, 4, 0xe01c0},
		{"DSDT", 40, 4, 0xe0200},
		{"SCI_INT", 46, 2, 9},
		{"SMI_CMD", 48, 4, 0},
		{"ACPI_ENABLE", 52, 1, 0},
		{"PM1a_EVT_BLK", 56, 4, 0x600},
		{"PM1b_EVT_BLK", 60, 4, 0},
		{"PM1a_CNT_BLK", 64, 4, 0x604},
		{"PM1b_CNT_BLK", 68, 4, 0},
		{"PM2_CNT_BLK", 72, 4, 0},
		{"PM_TMR_BLK", 76, 4, 0x608},
		{"GPE0_BLK", 80, 4, 0},
		{"PM1_EVT_LEN", 88, 1, 4},
		{"PM1_CNT_LEN", 89, 1, 2},
		{"PM2_CNT_LEN", 90, 1, 0},
		{"PM_TMR_LEN", 91, 1, 4},
		{"GPE0_BLK_LEN", 92, 1, 0},
		{"P_LVL2_LAT", 96, 2, 101},
		{"P_LVL3_LAT", 98, 2, 1001},
		{"IAPC_BOOT_ARCH", 109, 2, 0x000f},
		{"Flags", 112, 4, 0x435},
		{"RESET_REG", 116, 4, 0x01000801},
		{"RESET_REG.Address", 120, 8, 0xcf9},
		{"RESET_VALUE", 128, 1, 6},
		{"FADT minor version", 131, 1, 4},
		{"X_FIRMWARE_CTRL", 132, 8, 0},
		{"X_DSDT", 140, 8, 0xe0200},
		{"X_PM1a_EVT_BLK", 148, 4, 0x02002001},
		{"X_PM1a_EVT_BLK.Address", 152, 8, 0x600},
		{"X_PM1b_EVT_BLK", 160, 4, 0},
		{"X_PM1a_CNT_BLK", 172, 4, 0x02001001},
		{"X_PM1a_CNT_BLK.Address", 176, 8, 0x604},
		{"X_PM_TMR_BLK", 208, 4, 0x03002001},
		{"X_PM_TMR_BLK.Address", 212, 8, 0x608},
		{"X_GPE0_BLK", 220, 4, 0},
		{"SLEEP_CONTROL_REG", 244, 4, 0},
		{"Hypervisor Vendor Identity", 268, 8, 0},
	} {
		var got uint64
		switch c.size {
		case 1:
			got = uint64(f[c.off])
		case 2:
			got = uint64(le.Uint16(f[c.off:]))
		case 4:
			got = uint64(le.Uint32(f[c.off:]))
		case 8:
			got = le.Uint64(f[c.off:])
		}
		if got != c.want {
			t.Errorf("FADT %s at %d = %#x, want %#x", c.what, c.off, got, c.want)
		}
	}
	if fl := le.Uint32(f[112:]); fl&(1<<20) != 0 || fl&(1<<8) != 0 {
		t.Errorf("FADT flags %#x: HW_REDUCED_ACPI or TMR_VAL_EXT set", fl)
	}
}

func TestFACS(t *testing.T) {
	region, tb := build(t)
	want := make([]byte, 64)
	copy(want, "FACS\x40\x00\x00\x00")
	want[32] = 2
	if !bytes.Equal(tb.facs, want) {
		t.Errorf("FACS: % x", tb.facs)
	}
	if off := binary.LittleEndian.Uint32(tb.fadt[36:]); off%64 != 0 {
		t.Errorf("FACS at %#x not 64-byte aligned", off)
	}
	// Nothing past Size was touched.
	if region[Size] != 0xaa {
		t.Error("Build wrote past Size")
	}
}

func TestBuildErrors(t *testing.T) {
	if _, err := Build(make([]byte, Size-1), testBase); err == nil {
		t.Error("short region accepted")
	}
	if _, err := Build(make([]byte, Size), testBase+8); err == nil {
		t.Error("unaligned base accepted")
	}
	if _, err := Build(make([]byte, Size), 1<<32); err == nil {
		t.Error("base above 4 GiB accepted")
	}
}

func TestRSDPInBIOSScanArea(t *testing.T) {
	// Linux's legacy scan looks at 16-byte boundaries in 0xE0000-0xFFFFF;
	// the whole table set must fit there too.
	if testBase+Size > 0x100000 {
		t.Errorf("tables end at %#x, past the BIOS area", testBase+Size)
	}
}
