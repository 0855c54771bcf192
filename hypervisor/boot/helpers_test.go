package boot

import (
	"bytes"
	"encoding/binary"
)

// testBzImage builds a minimal protocol-2.15 bzImage: one setup sector
// after the boot sector, then a protected-mode "kernel" of kernelLen bytes
// whose byte i is byte(i*7).
func testBzImage(kernelLen int) []byte {
	const setupSects = 1
	setup := (setupSects + 1) * 512
	b := make([]byte, setup+kernelLen)
	le := binary.LittleEndian
	b[0x1f1] = setupSects
	le.PutUint32(b[0x1f4:], uint32(kernelLen/16))
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x200] = 0xeb
	b[0x201] = 0x6a // header ends at 0x26c
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], 0x020f)
	b[0x211] = 0x01 // LOADED_HIGH
	le.PutUint32(b[0x214:], 0x100000)
	le.PutUint32(b[0x22c:], 0x7fffffff)
	le.PutUint32(b[0x230:], 0x200000)
	b[0x234] = 1
	le.PutUint16(b[0x236:], 0x3)
	le.PutUint32(b[0x238:], 2047)
	le.PutUint64(b[0x258:], 0x1000000)
	le.PutUint32(b[0x260:], 0x400000)
	for i := 0; i < kernelLen; i++ {
		b[setup+i] = byte(i * 7)
	}
	return b
}

type testSeg struct {
	paddr  uint64
	data   []byte
	memsz  uint64
	isNote bool
}

// testELF builds an x86-64 ELF executable with the given segments.
func testELF(entry uint64, segs []testSeg) []byte {
	le := binary.LittleEndian
	var buf bytes.Buffer
	ehdr := make([]byte, 64)
	copy(ehdr, "\x7fELF\x02\x01\x01")
	le.PutUint16(ehdr[16:], 2)  // ET_EXEC
	le.PutUint16(ehdr[18:], 62) // EM_X86_64
	le.PutUint32(ehdr[20:], 1)
	le.PutUint64(ehdr[24:], entry)
	le.PutUint64(ehdr[32:], 64) // phoff
	le.PutUint16(ehdr[52:], 64)
	le.PutUint16(ehdr[54:], 56)
	le.PutUint16(ehdr[56:], uint16(len(segs)))
	le.PutUint16(ehdr[58:], 64)
	buf.Write(ehdr)
	off := uint64(64 + 56*len(segs))
	for _, s := range segs {
		ph := make([]byte, 56)
		typ, memsz := uint32(1), s.memsz // PT_LOAD
		if s.isNote {
			typ, memsz = 4, 0
		}
		le.PutUint32(ph[0:], typ)
		le.PutUint32(ph[4:], 5)
		le.PutUint64(ph[8:], off)
		le.PutUint64(ph[16:], 0xffffffff80000000+s.paddr)
		le.PutUint64(ph[24:], s.paddr)
		le.PutUint64(ph[32:], uint64(len(s.data)))
		le.PutUint64(ph[40:], memsz)
		le.PutUint64(ph[48:], 4)
		buf.Write(ph)
		off += uint64(len(s.data))
	}
	for _, s := range segs {
		buf.Write(s.data)
	}
	return buf.Bytes()
}

// testNote encodes one ELF note.
func testNote(name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	n := make([]byte, 12)
	le.PutUint32(n[0:], uint32(len(name)+1))
	le.PutUint32(n[4:], uint32(len(desc)))
	le.PutUint32(n[8:], typ)
	n = append(n, name...)
	n = append(n, 0)
	for len(n)%4 != 0 {
		n = append(n, 0)
	}
	n = append(n, desc...)
	for len(n)%4 != 0 {
		n = append(n, 0)
	}
	return n
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// testVmlinux is an ELF kernel at 16 MiB with a 0x3000-byte bss and, if
// pvh, a PVH note pointing at 16 MiB + 0x40.
func testVmlinux(pvh bool) []byte {
	text := make([]byte, 0x2000)
	for i := range text {
		text[i] = byte(i * 3)
	}
	notes := testNote("GNU", 3, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if pvh {
		notes = append(notes, testNote("Xen", XenElfnotePhys32Entry, le32(0x1000040))...)
	}
	return testELF(0x1000000, []testSeg{
		{paddr: 0x1000000, data: text, memsz: 0x5000},
		{data: notes, isNote: true},
	})
}
