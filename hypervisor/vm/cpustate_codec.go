package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// CPU state encoding, version 1. All integers little endian; the layout
// does not depend on Go struct layout, and every byte of a valid encoding
// is a field, so decoding then encoding reproduces the input exactly:
//
//	header   magic "FTVC" (4), version (2) = 1, flags (2): bit 0 = XSAVE
//	         (else FPU); other bits 0
//	regs     RAX RBX RCX RDX RSI RDI RSP RBP R8..R15 RIP RFLAGS, 8 each (144)
//	sregs    CS DS ES FS GS SS TR LDT, each Base (8) Limit (4) Selector (2)
//	         Type Present DPL DB S L G AVL Unusable (1 each) = 23;
//	         GDT, IDT: Base (8) Limit (2); CR0 CR2 CR3 CR4 CR8 EFER
//	         APICBase (8 each); InterruptBitmap (4 x 8)               (292)
//	fp       flags bit 0: the 4096-byte kvm_xsave region as is;
//	         otherwise FPR (8 x 16) FCW (2) FSW (2) FTWX (1)
//	         LastOpcode (2) LastIP (8) LastDP (8) XMM (16 x 16) MXCSR (4)
//	xcrs     count (1, <= 16), then count x (XCR number (4), value (8))
//	events   exception: injected nr has_error_code pending (1 each)
//	         error_code (4); interrupt: injected nr soft shadow (1 each);
//	         nmi: injected pending masked (1 each); sipi_vector (4);
//	         flags (4); smi: smm pending smm_inside_nmi latched_init
//	         (1 each); triple_fault pending (1); exception_has_payload
//	         (1); exception_payload (8)                                 (37)
//	debug    DR0 DR1 DR2 DR3 DR6 DR7, 8 each                           (48)
//	msrs     count (2, <= MaxCPUStateMSRs), then count x (index (4),
//	         value (8)), indices strictly ascending
//
// Flag-like bytes (segment Present, DB, S, L, G, AVL, Unusable; the event
// booleans) must be 0 or 1, segment Type <= 15, DPL <= 3, the interrupt
// shadow <= 3, event flags only KVM_VCPUEVENT_VALID_* bits, and nothing may
// follow the MSRs. There is no checksum: the log channel frames carry one.
const (
	cpuStateMagic   = "FTVC"
	cpuStateVersion = 1

	cpuStateFlagXSave = 1 << 0

	// MaxCPUStateMSRs bounds the MSR list (the checkpoint of a Linux
	// guest with the 32 machine-check banks KVM gives a vCPU has about
	// 170).
	MaxCPUStateMSRs = 512

	cpuStateHeaderSize = 8
	regsSize           = 18 * 8
	segmentSize        = 8 + 4 + 2 + 9
	sregsSize          = 8*segmentSize + 2*(8+2) + 7*8 + 4*8
	fpuSize            = 8*16 + 2 + 2 + 1 + 2 + 8 + 8 + 16*16 + 4
	xcrSize            = 4 + 8
	eventsSize         = 4 + 4 + 4 + 3 + 4 + 4 + 4 + 1 + 1 + 8
	debugSize          = 6 * 8
	msrSize            = 4 + 8

	// MaxCPUStateSize is the largest valid encoding; a decoder refuses
	// anything longer before looking at it.
	MaxCPUStateSize = cpuStateHeaderSize + regsSize + sregsSize + kvm.XSaveSize +
		1 + kvm.MaxXCRs*xcrSize + eventsSize + debugSize + 2 + MaxCPUStateMSRs*msrSize
)

// kvmVCPUEventValidFlags are the KVM_VCPUEVENT_VALID_* bits.
const kvmVCPUEventValidFlags = 0x3f

// MarshalBinary encodes the state (see the encoding above). It refuses a
// state the decoder would refuse, so whatever it returns decodes.
func (c *CPUState) MarshalBinary() ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("encode vCPU state: %w", err)
	}
	size := cpuStateHeaderSize + regsSize + sregsSize + fpuSize + 1 + len(c.XCRs)*xcrSize +
		eventsSize + debugSize + 2 + len(c.MSRs)*msrSize
	var flags uint16
	if c.HasXSave {
		flags |= cpuStateFlagXSave
		size += kvm.XSaveSize - fpuSize
	}
	w := stateWriter{b: make([]byte, 0, size)}
	w.bytes([]byte(cpuStateMagic))
	w.u16(cpuStateVersion)
	w.u16(flags)

	r := &c.Regs
	for _, v := range [...]uint64{r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RSP, r.RBP,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15, r.RIP, r.RFLAGS} {
		w.u64(v)
	}

	s := &c.Sregs
	for _, seg := range segments(s) {
		w.u64(seg.Base)
		w.u32(seg.Limit)
		w.u16(seg.Selector)
		w.bytes([]byte{seg.Type, seg.Present, seg.DPL, seg.DB, seg.S, seg.L, seg.G, seg.AVL, seg.Unusable})
	}
	for _, dt := range [...]*kvm.DTable{&s.GDT, &s.IDT} {
		w.u64(dt.Base)
		w.u16(dt.Limit)
	}
	for _, v := range [...]uint64{s.CR0, s.CR2, s.CR3, s.CR4, s.CR8, s.EFER, s.APICBase,
		s.InterruptBitmap[0], s.InterruptBitmap[1], s.InterruptBitmap[2], s.InterruptBitmap[3]} {
		w.u64(v)
	}

	if c.HasXSave {
		w.bytes(c.XSave.Bytes())
	} else {
		f := &c.FPU
		for i := range f.FPR {
			w.bytes(f.FPR[i][:])
		}
		w.u16(f.FCW)
		w.u16(f.FSW)
		w.bytes([]byte{f.FTWX})
		w.u16(f.LastOpcode)
		w.u64(f.LastIP)
		w.u64(f.LastDP)
		for i := range f.XMM {
			w.bytes(f.XMM[i][:])
		}
		w.u32(f.MXCSR)
	}

	w.bytes([]byte{byte(len(c.XCRs))})
	for _, x := range c.XCRs {
		w.u32(x.XCR)
		w.u64(x.Value)
	}

	e := &c.Events
	w.bytes([]byte{e.Exception.Injected, e.Exception.Nr, e.Exception.HasErrorCode, e.Exception.Pending})
	w.u32(e.Exception.ErrorCode)
	w.bytes([]byte{e.Interrupt.Injected, e.Interrupt.Nr, e.Interrupt.Soft, e.Interrupt.Shadow})
	w.bytes([]byte{e.NMI.Injected, e.NMI.Pending, e.NMI.Masked})
	w.u32(e.SIPIVector)
	w.u32(e.Flags)
	w.bytes([]byte{e.SMI.SMM, e.SMI.Pending, e.SMI.SMMInsideNMI, e.SMI.LatchedInit})
	w.bytes([]byte{e.TripleFault.Pending, e.ExceptionHasPayload})
	w.u64(e.ExceptionPayload)

	d := &c.Debug
	for _, v := range [...]uint64{d.DB[0], d.DB[1], d.DB[2], d.DB[3], d.DR6, d.DR7} {
		w.u64(v)
	}

	w.u16(uint16(len(c.MSRs)))
	for _, m := range c.MSRs {
		w.u32(m.Index)
		w.u64(m.Data)
	}
	if len(w.b) != size {
		panic(fmt.Sprintf("vCPU state encoding is %d bytes, computed %d", len(w.b), size))
	}
	return w.b, nil
}

// UnmarshalBinary decodes an encoding made by MarshalBinary, replacing all
// of c. It takes untrusted input: anything but a complete, valid version-1
// encoding is refused with an error saying what is wrong, and nothing it
// decodes aliases data.
func (c *CPUState) UnmarshalBinary(data []byte) error {
	if err := c.unmarshal(data); err != nil {
		return fmt.Errorf("decode vCPU state: %w", err)
	}
	return nil
}

func (c *CPUState) unmarshal(data []byte) error {
	if len(data) > MaxCPUStateSize {
		return fmt.Errorf("%d bytes, more than the largest valid state (%d)", len(data), MaxCPUStateSize)
	}
	r := stateReader{b: data}
	var out CPUState
	magic := r.bytes("header", 4)
	version := r.u16("header")
	flags := r.u16("header")
	if r.err != nil {
		return r.err
	}
	if string(magic) != cpuStateMagic {
		return fmt.Errorf("not a vCPU state: magic %q, want %q", magic, cpuStateMagic)
	}
	if version != cpuStateVersion {
		return fmt.Errorf("encoding version %d, this build reads version %d", version, cpuStateVersion)
	}
	if flags&^cpuStateFlagXSave != 0 {
		return fmt.Errorf("unknown header flags %#x", flags&^cpuStateFlagXSave)
	}
	out.HasXSave = flags&cpuStateFlagXSave != 0

	g := &out.Regs
	for _, p := range [...]*uint64{&g.RAX, &g.RBX, &g.RCX, &g.RDX, &g.RSI, &g.RDI, &g.RSP, &g.RBP,
		&g.R8, &g.R9, &g.R10, &g.R11, &g.R12, &g.R13, &g.R14, &g.R15, &g.RIP, &g.RFLAGS} {
		*p = r.u64("regs")
	}

	s := &out.Sregs
	for _, seg := range segments(s) {
		seg.Base = r.u64("sregs")
		seg.Limit = r.u32("sregs")
		seg.Selector = r.u16("sregs")
		if b := r.bytes("sregs", 9); b != nil {
			seg.Type, seg.Present, seg.DPL, seg.DB, seg.S, seg.L, seg.G, seg.AVL, seg.Unusable =
				b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]
		}
	}
	for _, dt := range [...]*kvm.DTable{&s.GDT, &s.IDT} {
		dt.Base = r.u64("sregs")
		dt.Limit = r.u16("sregs")
	}
	for _, p := range [...]*uint64{&s.CR0, &s.CR2, &s.CR3, &s.CR4, &s.CR8, &s.EFER, &s.APICBase,
		&s.InterruptBitmap[0], &s.InterruptBitmap[1], &s.InterruptBitmap[2], &s.InterruptBitmap[3]} {
		*p = r.u64("sregs")
	}

	if out.HasXSave {
		if b := r.bytes("xsave", kvm.XSaveSize); b != nil {
			copy(out.XSave.Bytes(), b)
		}
	} else {
		f := &out.FPU
		for i := range f.FPR {
			if b := r.bytes("fpu", 16); b != nil {
				copy(f.FPR[i][:], b)
			}
		}
		f.FCW = r.u16("fpu")
		f.FSW = r.u16("fpu")
		f.FTWX = r.u8("fpu")
		f.LastOpcode = r.u16("fpu")
		f.LastIP = r.u64("fpu")
		f.LastDP = r.u64("fpu")
		for i := range f.XMM {
			if b := r.bytes("fpu", 16); b != nil {
				copy(f.XMM[i][:], b)
			}
		}
		f.MXCSR = r.u32("fpu")
	}

	nx := int(r.u8("xcrs"))
	if r.err == nil && nx > kvm.MaxXCRs {
		return fmt.Errorf("%d XCRs, at most %d", nx, kvm.MaxXCRs)
	}
	for i := 0; i < nx && r.err == nil; i++ {
		x := kvm.XCR{XCR: r.u32("xcrs")}
		x.Value = r.u64("xcrs")
		out.XCRs = append(out.XCRs, x)
	}

	e := &out.Events
	if b := r.bytes("events", 4); b != nil {
		e.Exception.Injected, e.Exception.Nr, e.Exception.HasErrorCode, e.Exception.Pending = b[0], b[1], b[2], b[3]
	}
	e.Exception.ErrorCode = r.u32("events")
	if b := r.bytes("events", 4); b != nil {
		e.Interrupt.Injected, e.Interrupt.Nr, e.Interrupt.Soft, e.Interrupt.Shadow = b[0], b[1], b[2], b[3]
	}
	if b := r.bytes("events", 3); b != nil {
		e.NMI.Injected, e.NMI.Pending, e.NMI.Masked = b[0], b[1], b[2]
	}
	e.SIPIVector = r.u32("events")
	e.Flags = r.u32("events")
	if b := r.bytes("events", 4); b != nil {
		e.SMI.SMM, e.SMI.Pending, e.SMI.SMMInsideNMI, e.SMI.LatchedInit = b[0], b[1], b[2], b[3]
	}
	e.TripleFault.Pending = r.u8("events")
	e.ExceptionHasPayload = r.u8("events")
	e.ExceptionPayload = r.u64("events")

	d := &out.Debug
	for _, p := range [...]*uint64{&d.DB[0], &d.DB[1], &d.DB[2], &d.DB[3], &d.DR6, &d.DR7} {
		*p = r.u64("debug registers")
	}

	nm := int(r.u16("msrs"))
	if r.err == nil && nm > MaxCPUStateMSRs {
		return fmt.Errorf("%d MSRs, at most %d", nm, MaxCPUStateMSRs)
	}
	if r.err == nil && r.left() < nm*msrSize {
		return fmt.Errorf("truncated: %d MSRs need %d bytes, %d left", nm, nm*msrSize, r.left())
	}
	if nm > 0 {
		out.MSRs = make([]kvm.MSREntry, nm)
	}
	for i := 0; i < nm && r.err == nil; i++ {
		out.MSRs[i].Index = r.u32("msrs")
		out.MSRs[i].Data = r.u64("msrs")
	}
	if r.err != nil {
		return r.err
	}
	if n := r.left(); n != 0 {
		return fmt.Errorf("%d bytes after the end of the state", n)
	}
	if err := out.validate(); err != nil {
		return err
	}
	*c = out
	return nil
}

// validate checks what the encoding requires beyond field widths.
func (c *CPUState) validate() error {
	names := [...]string{"CS", "DS", "ES", "FS", "GS", "SS", "TR", "LDT"}
	for i, seg := range segments(&c.Sregs) {
		if seg.Type > 15 || seg.DPL > 3 {
			return fmt.Errorf("segment %s: type %d, DPL %d out of range", names[i], seg.Type, seg.DPL)
		}
		for _, b := range [...]uint8{seg.Present, seg.DB, seg.S, seg.L, seg.G, seg.AVL, seg.Unusable} {
			if b > 1 {
				return fmt.Errorf("segment %s: a flag is %d, not 0 or 1", names[i], b)
			}
		}
	}
	if !c.HasXSave && c.XSave != (kvm.XSave{}) {
		return errors.New("XSAVE state present without HasXSave")
	}
	if c.HasXSave && c.FPU != (kvm.FPU{}) {
		return errors.New("FPU state present next to XSAVE state")
	}
	if len(c.XCRs) > kvm.MaxXCRs {
		return fmt.Errorf("%d XCRs, at most %d", len(c.XCRs), kvm.MaxXCRs)
	}
	for i := 1; i < len(c.XCRs); i++ {
		if c.XCRs[i].XCR <= c.XCRs[i-1].XCR {
			return fmt.Errorf("XCR%d follows XCR%d: XCRs must be in ascending order", c.XCRs[i].XCR, c.XCRs[i-1].XCR)
		}
	}
	e := &c.Events
	for _, f := range [...]struct {
		name string
		v    uint8
	}{
		{"exception.injected", e.Exception.Injected}, {"exception.has_error_code", e.Exception.HasErrorCode},
		{"exception.pending", e.Exception.Pending}, {"interrupt.injected", e.Interrupt.Injected},
		{"interrupt.soft", e.Interrupt.Soft}, {"nmi.injected", e.NMI.Injected}, {"nmi.pending", e.NMI.Pending},
		{"nmi.masked", e.NMI.Masked}, {"smi.smm", e.SMI.SMM}, {"smi.pending", e.SMI.Pending},
		{"smi.smm_inside_nmi", e.SMI.SMMInsideNMI}, {"smi.latched_init", e.SMI.LatchedInit},
		{"triple_fault.pending", e.TripleFault.Pending}, {"exception_has_payload", e.ExceptionHasPayload},
	} {
		if f.v > 1 {
			return fmt.Errorf("event %s is %d, not 0 or 1", f.name, f.v)
		}
	}
	if e.Interrupt.Shadow > 3 {
		return fmt.Errorf("interrupt shadow %#x: only MOV SS (1) and STI (2) exist", e.Interrupt.Shadow)
	}
	if e.Flags&^kvmVCPUEventValidFlags != 0 {
		return fmt.Errorf("unknown event flags %#x", e.Flags&^kvmVCPUEventValidFlags)
	}
	if c.Debug.Flags != 0 {
		return fmt.Errorf("debug register flags %#x, must be 0", c.Debug.Flags)
	}
	if len(c.MSRs) > MaxCPUStateMSRs {
		return fmt.Errorf("%d MSRs, at most %d", len(c.MSRs), MaxCPUStateMSRs)
	}
	for i := 1; i < len(c.MSRs); i++ {
		if c.MSRs[i].Index <= c.MSRs[i-1].Index {
			return fmt.Errorf("MSR %#x follows MSR %#x: MSRs must be in ascending order, each once", c.MSRs[i].Index, c.MSRs[i-1].Index)
		}
	}
	return nil
}

// Equal reports whether two states are the same (what the encoding
// carries).
func (c *CPUState) Equal(o *CPUState) bool {
	return c.Regs == o.Regs && c.Sregs == o.Sregs && c.HasXSave == o.HasXSave &&
		c.XSave == o.XSave && c.FPU == o.FPU && slices.Equal(c.XCRs, o.XCRs) &&
		c.Events == o.Events && c.Debug == o.Debug && slices.Equal(c.MSRs, o.MSRs)
}

func segments(s *kvm.Sregs) [8]*kvm.Segment {
	return [8]*kvm.Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS, &s.TR, &s.LDT}
}

// stateWriter appends little-endian fields.
type stateWriter struct{ b []byte }

func (w *stateWriter) bytes(p []byte) { w.b = append(w.b, p...) }
func (w *stateWriter) u16(v uint16)   { w.b = binary.LittleEndian.AppendUint16(w.b, v) }
func (w *stateWriter) u32(v uint32)   { w.b = binary.LittleEndian.AppendUint32(w.b, v) }
func (w *stateWriter) u64(v uint64)   { w.b = binary.LittleEndian.AppendUint64(w.b, v) }

// stateReader reads little-endian fields; the first read past the end
// records an error naming the section, and every later read returns zero.
type stateReader struct {
	b   []byte
	off int
	err error
}

func (r *stateReader) left() int { return len(r.b) - r.off }

func (r *stateReader) bytes(section string, n int) []byte {
	if r.err != nil {
		return nil
	}
	if r.left() < n {
		r.err = fmt.Errorf("truncated in the %s section at byte %d: %d more bytes needed, %d left", section, r.off, n, r.left())
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *stateReader) u8(section string) uint8 {
	if b := r.bytes(section, 1); b != nil {
		return b[0]
	}
	return 0
}

func (r *stateReader) u16(section string) uint16 {
	if b := r.bytes(section, 2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *stateReader) u32(section string) uint32 {
	if b := r.bytes(section, 4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *stateReader) u64(section string) uint64 {
	if b := r.bytes(section, 8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}
