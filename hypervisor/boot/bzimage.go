package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// Control register and EFER bits used by the entry states.
const (
	cr0PE          = 1 << 0
	cr0ET          = 1 << 4
	cr0PG          = 1 << 31
	cr4PAE         = 1 << 5
	eferLME        = 1 << 8
	eferLMA        = 1 << 10
	rflagsReserved = 1 << 1
)

const (
	// minProtocol is 2.12: the first with xloadflags, which is how a
	// kernel says it has the 64-bit entry.
	minProtocol = 0x020c
	// entry64Offset is where the 64-bit entry sits in the protected-mode
	// kernel (boot.rst, "64-bit BOOT PROTOCOL").
	entry64Offset = 0x200
)

// bzImage is a parsed bzImage: its header and protected-mode kernel.
type bzImage struct {
	hdr      SetupHeader
	kernel   []byte // protected-mode part, to load at loadAddr
	loadAddr uint64
	// memSize is how much memory from loadAddr the kernel needs before it
	// relocates or decompresses itself: init_size, or the file part if
	// larger.
	memSize uint64
}

// parseBzImage validates the setup header of a bzImage. Only the fields the
// kernel's header actually contains (up to 0x202 + the byte at 0x201) are
// taken from the file; the rest of the struct stays zero.
func parseBzImage(data []byte) (*bzImage, error) {
	if len(data) < 0x206 {
		return nil, fmt.Errorf("file of %d bytes too short for a setup header", len(data))
	}
	if m := binary.LittleEndian.Uint32(data[0x202:]); m != hdrMagic {
		return nil, fmt.Errorf("no \"HdrS\" magic at 0x202 (found %#08x): not a bzImage", m)
	}
	hdrEnd := 0x202 + int(data[0x201])
	if hdrEnd > len(data) {
		return nil, fmt.Errorf("setup header ends at %#x beyond end of file (%d bytes): truncated", hdrEnd, len(data))
	}
	var raw [setupHeaderEnd - setupHeaderOff]byte
	copy(raw[:], data[setupHeaderOff:min(hdrEnd, setupHeaderEnd)])
	var h SetupHeader
	if err := binary.Read(bytes.NewReader(raw[:]), binary.LittleEndian, &h); err != nil {
		return nil, fmt.Errorf("decode setup header: %w", err)
	}
	if h.BootFlag != bootFlagMagic {
		return nil, fmt.Errorf("boot_flag is %#04x, want 0xaa55", h.BootFlag)
	}
	if h.Version < minProtocol {
		return nil, fmt.Errorf("boot protocol %d.%02d, need 2.12 or later", h.Version>>8, h.Version&0xff)
	}
	// init_size (0x260..0x264) must be inside the header the kernel has.
	if hdrEnd < 0x264 {
		return nil, fmt.Errorf("protocol %d.%02d header ends at %#x, before init_size", h.Version>>8, h.Version&0xff, hdrEnd)
	}
	if h.XLoadFlags&XLFKernel64 == 0 {
		return nil, errors.New("kernel has no 64-bit entry point (XLF_KERNEL_64 clear)")
	}
	sects := int(h.SetupSects)
	if sects == 0 {
		sects = 4 // boot.rst: 0 means 4, for ancient compatibility
	}
	setupSize := (sects + 1) * 512
	if setupSize >= len(data) {
		return nil, fmt.Errorf("setup code of %d bytes leaves no protected-mode kernel in %d bytes: truncated", setupSize, len(data))
	}
	kernel := data[setupSize:]
	if want := uint64(h.SysSize) * 16; want > uint64(len(kernel)) {
		return nil, fmt.Errorf("protected-mode kernel is %d bytes, header says %d: truncated", len(kernel), want)
	}
	if h.PrefAddress < HighMemStart {
		return nil, fmt.Errorf("preferred load address %#x below 1 MiB", h.PrefAddress)
	}
	if h.KernelAlignment != 0 && h.KernelAlignment&(h.KernelAlignment-1) == 0 && h.PrefAddress%uint64(h.KernelAlignment) != 0 {
		return nil, fmt.Errorf("preferred load address %#x not aligned to kernel_alignment %#x", h.PrefAddress, h.KernelAlignment)
	}
	if h.PrefAddress+entry64Offset < h.PrefAddress || h.PrefAddress > 1<<47 {
		return nil, fmt.Errorf("preferred load address %#x out of range", h.PrefAddress)
	}
	return &bzImage{
		hdr:      h,
		kernel:   kernel,
		loadAddr: h.PrefAddress,
		memSize:  max(uint64(h.InitSize), uint64(len(kernel))),
	}, nil
}

// linux64Regs is the 64-bit boot protocol's register state: RSI points at
// boot_params, interrupts off.
func linux64Regs(entry uint64) kvm.Regs {
	return kvm.Regs{
		RIP:    entry,
		RSI:    ZeroPageAddr,
		RSP:    BootStackAddr,
		RBP:    BootStackAddr,
		RFLAGS: rflagsReserved,
	}
}

// linux64Sregs is long mode with the identity page tables: CS = __BOOT_CS
// (64-bit code), DS/ES/SS = __BOOT_DS as the protocol requires, paging,
// PAE, LME and LMA on.
func linux64Sregs(s *kvm.Sregs) {
	gdt := BootGDT()
	setGDTRegisters(s)
	s.CS = SegmentFromGDT(gdt[SelectorCode64/8], SelectorCode64)
	data := SegmentFromGDT(gdt[SelectorData/8], SelectorData)
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = SegmentFromGDT(gdt[SelectorTSS/8], SelectorTSS)
	s.CR0 = cr0PE | cr0ET | cr0PG
	s.CR3 = PML4Addr
	s.CR4 = cr4PAE
	s.EFER = eferLME | eferLMA
}
