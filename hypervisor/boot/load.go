package boot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// Config says what to boot.
type Config struct {
	// Kernel is the image (ELF vmlinux or bzImage). If nil, KernelPath is
	// read. KernelPath also names the kernel in errors.
	Kernel     []byte
	KernelPath string
	// Initrd is the initial ramdisk, read from InitrdPath if nil; both
	// empty means none.
	Initrd     []byte
	InitrdPath string
	// Cmdline is the kernel command line, without a NUL.
	Cmdline string
	// MemSize is the guest's RAM in bytes, laid out per MemoryRegions; 0
	// means len(mem). mem must hold at least MemSize bytes.
	MemSize uint64
	// RSDP is the guest physical address of the ACPI RSDP (from
	// hypervisor/acpi), 0 for none.
	RSDP uint64
}

// Protocol is how the kernel is entered.
type Protocol int

const (
	// ProtocolPVH enters an ELF vmlinux at its Xen PVH note in 32-bit
	// protected mode with EBX = the hvm_start_info address.
	ProtocolPVH Protocol = iota + 1
	// ProtocolLinux64 enters a bzImage (or an ELF without a PVH note) in
	// long mode with RSI = the boot_params address.
	ProtocolLinux64
)

func (p Protocol) String() string {
	switch p {
	case ProtocolPVH:
		return "pvh"
	case ProtocolLinux64:
		return "linux64"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// Entry is the vCPU state that starts the loaded kernel, and where things
// were put (for logs and checks).
type Entry struct {
	Protocol Protocol
	// Regs is the complete general register state to set.
	Regs kvm.Regs
	// KernelStart..KernelEnd is the memory the kernel occupies (for a
	// bzImage, through init_size).
	KernelStart, KernelEnd uint64
	// InitrdAddr and InitrdSize locate the initrd; size 0 means none.
	InitrdAddr, InitrdSize uint64
}

// SetupSregs fills the segment, descriptor-table and control registers for
// the entry into s, which the caller read from the vCPU (KVM_GET_SREGS) so
// that the fields boot does not own (APIC base, the LDT, the pending
// interrupt bitmap) keep KVM's reset values.
func (e Entry) SetupSregs(s *kvm.Sregs) {
	switch e.Protocol {
	case ProtocolPVH:
		pvhSregs(s)
	case ProtocolLinux64:
		linux64Sregs(s)
	}
}

// Load writes the kernel, initrd, command line and boot structures into
// guest memory mem (guest physical address 0 at mem[0]) and returns how to
// enter the kernel. An ELF image is booted through PVH if it has the note,
// else through its 64-bit entry; a bzImage through the 64-bit boot
// protocol.
func Load(mem []byte, cfg Config) (Entry, error) {
	kname := cfg.KernelPath
	if kname == "" {
		kname = "(kernel given as bytes)"
	}
	e, err := load(mem, cfg)
	if err != nil {
		return Entry{}, fmt.Errorf("load kernel %s: %w", kname, err)
	}
	return e, nil
}

func load(mem []byte, cfg Config) (Entry, error) {
	kernel, err := readInput(cfg.Kernel, cfg.KernelPath)
	if err != nil {
		return Entry{}, err
	}
	if len(kernel) == 0 {
		return Entry{}, errors.New("no kernel image given")
	}
	initrd, err := readInput(cfg.Initrd, cfg.InitrdPath)
	if err != nil {
		return Entry{}, fmt.Errorf("initrd: %w", err)
	}
	memSize := cfg.MemSize
	if memSize == 0 {
		memSize = uint64(len(mem))
	}
	if memSize > uint64(len(mem)) {
		return Entry{}, fmt.Errorf("memory size %#x larger than the %#x-byte buffer", memSize, len(mem))
	}
	low := mem[:lowMemEnd(memSize)]
	if uint64(len(low)) < 2*HighMemStart {
		return Entry{}, fmt.Errorf("guest memory of %d bytes too small to boot Linux", len(low))
	}
	if strings.IndexByte(cfg.Cmdline, 0) >= 0 {
		return Entry{}, errors.New("command line contains a NUL byte")
	}
	if err := writeGDT(low); err != nil {
		return Entry{}, err
	}

	switch {
	case bytes.HasPrefix(kernel, []byte(elfMagic)):
		return loadELF(low, memSize, kernel, initrd, cfg)
	case len(kernel) >= 0x206 && string(kernel[0x202:0x206]) == "HdrS":
		return loadBzImage(low, memSize, kernel, initrd, cfg)
	default:
		return Entry{}, errors.New("neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" at 0x202)")
	}
}

const elfMagic = "\x7fELF"

func readInput(data []byte, path string) ([]byte, error) {
	if data != nil || path == "" {
		return data, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func loadELF(low []byte, memSize uint64, data, initrd []byte, cfg Config) (Entry, error) {
	k, err := parseELF(data)
	if err != nil {
		return Entry{}, err
	}
	start, end, err := k.loadSegments(data, low)
	if err != nil {
		return Entry{}, err
	}
	if err := writeCmdline(low, cfg.Cmdline, LinuxCommandLineSize-1); err != nil {
		return Entry{}, err
	}
	initrdAddr, err := placeInitrd(low, initrd, end, uint64(len(low)))
	if err != nil {
		return Entry{}, err
	}
	e := Entry{KernelStart: start, KernelEnd: end, InitrdAddr: initrdAddr, InitrdSize: uint64(len(initrd))}
	if k.hasPVH {
		if err := writePVHStartInfo(low, memSize, cfg.Cmdline != "", initrdAddr, uint64(len(initrd)), cfg.RSDP); err != nil {
			return Entry{}, err
		}
		e.Protocol = ProtocolPVH
		e.Regs = pvhRegs(k.pvhEntry)
		return e, nil
	}
	// No PVH note: enter at e_entry (startup_64 for a Linux vmlinux) with
	// a synthesized zero page, as the 64-bit protocol describes.
	if k.entry < start || k.entry >= end {
		return Entry{}, fmt.Errorf("no PVH note, and entry point %#x is outside the loaded segments %#x-%#x", k.entry, start, end)
	}
	if err := writeZeroPage(low, synthesizedHeader(), memSize, cfg, initrdAddr, uint64(len(initrd))); err != nil {
		return Entry{}, err
	}
	if err := writePageTables(low); err != nil {
		return Entry{}, err
	}
	e.Protocol = ProtocolLinux64
	e.Regs = linux64Regs(k.entry)
	return e, nil
}

func loadBzImage(low []byte, memSize uint64, data, initrd []byte, cfg Config) (Entry, error) {
	bz, err := parseBzImage(data)
	if err != nil {
		return Entry{}, err
	}
	end := bz.loadAddr + bz.memSize
	if end > uint64(len(low)) {
		return Entry{}, fmt.Errorf("kernel needs %#x bytes at %#x, RAM ends at %#x: kernel bigger than RAM", bz.memSize, bz.loadAddr, len(low))
	}
	copy(low[bz.loadAddr:], bz.kernel)
	if err := writeCmdline(low, cfg.Cmdline, int(bz.hdr.CmdlineSize)); err != nil {
		return Entry{}, err
	}
	top := min(uint64(len(low)), uint64(bz.hdr.InitrdAddrMax)+1)
	initrdAddr, err := placeInitrd(low, initrd, end, top)
	if err != nil {
		return Entry{}, err
	}
	if err := writeZeroPage(low, bz.hdr, memSize, cfg, initrdAddr, uint64(len(initrd))); err != nil {
		return Entry{}, err
	}
	if err := writePageTables(low); err != nil {
		return Entry{}, err
	}
	return Entry{
		Protocol:    ProtocolLinux64,
		Regs:        linux64Regs(bz.loadAddr + entry64Offset),
		KernelStart: bz.loadAddr,
		KernelEnd:   end,
		InitrdAddr:  initrdAddr,
		InitrdSize:  uint64(len(initrd)),
	}, nil
}

// writeCmdline writes the command line, NUL-terminated, at CmdlineAddr.
// max is the kernel's limit without the NUL (cmdline_size).
func writeCmdline(low []byte, cmdline string, max int) error {
	if len(cmdline) > max || len(cmdline)+1 > CmdlineMax {
		return fmt.Errorf("command line of %d bytes exceeds the kernel's cmdline_size of %d", len(cmdline), max)
	}
	n := copy(low[CmdlineAddr:], cmdline)
	low[CmdlineAddr+uint64(n)] = 0
	return nil
}

// placeInitrd puts the initrd as high as possible below top, page aligned
// (where boot loaders conventionally put it, leaving the kernel room to
// decompress and grow above its load address), and refuses to overlap the
// kernel that ends at kernelEnd.
func placeInitrd(low, initrd []byte, kernelEnd, top uint64) (uint64, error) {
	size := uint64(len(initrd))
	if size == 0 {
		return 0, nil
	}
	floor := (kernelEnd + PageSize - 1) &^ (PageSize - 1)
	if size > top || (top-size)&^(PageSize-1) < floor {
		return 0, fmt.Errorf("initrd of %d bytes does not fit between the kernel's end %#x and %#x", size, kernelEnd, top)
	}
	addr := (top - size) &^ (PageSize - 1)
	copy(low[addr:], initrd)
	return addr, nil
}

func writeZeroPage(low []byte, hdr SetupHeader, memSize uint64, cfg Config, initrdAddr, initrdSize uint64) error {
	cmdlineLen := len(cfg.Cmdline)
	bp, err := buildBootParams(bootParamsInput{
		hdr:        hdr,
		memSize:    memSize,
		cmdlineLen: cmdlineLen,
		initrdAddr: initrdAddr,
		initrdSize: initrdSize,
		rsdp:       cfg.RSDP,
	})
	if err != nil {
		return err
	}
	b, err := bp.MarshalBinary()
	if err != nil {
		return err
	}
	copy(low[ZeroPageAddr:ZeroPageAddr+PageSize], b)
	return nil
}
