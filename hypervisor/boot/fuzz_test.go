package boot

import (
	"testing"
)

// FuzzParseBzImage feeds untrusted bytes to the setup header parser: it
// must never panic, and whatever it accepts must be loadable without
// reading outside the file.
func FuzzParseBzImage(f *testing.F) {
	f.Add(testBzImage(0x100))
	f.Add(testBzImage(0x10000)[:0x300])
	f.Add([]byte("HdrS"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bz, err := parseBzImage(data)
		if err != nil {
			return
		}
		if bz.hdr.Header != hdrMagic || bz.hdr.Version < minProtocol || bz.hdr.XLoadFlags&XLFKernel64 == 0 {
			t.Fatalf("accepted header %+v", bz.hdr)
		}
		if len(bz.kernel) == 0 || bz.memSize < uint64(len(bz.kernel)) || bz.loadAddr < HighMemStart {
			t.Fatalf("accepted image: kernel %d bytes, memSize %#x, load %#x", len(bz.kernel), bz.memSize, bz.loadAddr)
		}
	})
}

// FuzzParseELF feeds untrusted bytes to the ELF program header and PVH note
// parser.
func FuzzParseELF(f *testing.F) {
	f.Add(testVmlinux(true))
	f.Add(testVmlinux(false))
	f.Add(testELF(0x1000000, []testSeg{{data: testNote("Xen", XenElfnotePhys32Entry, make([]byte, 8)), isNote: true}, {paddr: 0x100000, data: []byte{1}, memsz: 2}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := parseELF(data)
		if err != nil {
			return
		}
		for _, s := range k.segments {
			if s.filesz > s.memsz || s.off+s.filesz > uint64(len(data)) || s.paddr+s.memsz < s.paddr {
				t.Fatalf("accepted segment %+v of a %d-byte file", s, len(data))
			}
		}
		// Loading into a small buffer must fail cleanly or succeed.
		mem := make([]byte, 4<<20)
		_, _, _ = k.loadSegments(data, mem)
	})
}

// FuzzFindPVHNote fuzzes the note walker on its own, where the fuzzer
// reaches the length arithmetic far faster than through an ELF file.
func FuzzFindPVHNote(f *testing.F) {
	f.Add(testNote("Xen", XenElfnotePhys32Entry, le32(0x1000000)))
	f.Add(append(testNote("GNU", 1, []byte{1}), testNote("Xen", XenElfnotePhys32Entry, make([]byte, 8))...))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = findPVHNote(b)
	})
}

func TestFindPVHNote(t *testing.T) {
	notes := append(testNote("GNU", 3, make([]byte, 20)), testNote("Xen", XenElfnotePhys32Entry, le32(0x1234))...)
	if e, ok, err := findPVHNote(notes); err != nil || !ok || e != 0x1234 {
		t.Errorf("findPVHNote = %#x, %v, %v", e, ok, err)
	}
	// A Xen note of another type, or the type under another name, is not it.
	for _, n := range [][]byte{testNote("Xen", 17, le32(1)), testNote("Linux", XenElfnotePhys32Entry, le32(1))} {
		if _, ok, err := findPVHNote(n); ok || err != nil {
			t.Errorf("findPVHNote(%x) = %v, %v", n, ok, err)
		}
	}
	if _, _, err := findPVHNote(testNote("Xen", XenElfnotePhys32Entry, []byte{1, 2})); err == nil {
		t.Error("2-byte PVH descriptor accepted")
	}
	if _, _, err := findPVHNote(notes[:len(notes)-2]); err == nil {
		t.Error("truncated note accepted")
	}
}
