package devices

import (
	"errors"
	"fmt"
	"time"
)

// Saved state. Each model's State returns what the guest can observe of it,
// and SetState loads such a value into a model built the same way (same
// wiring: clock, IRQ sink, ports), after which it answers every access as
// the saved one would. The fields are plain fixed-size values so that a
// snapshot can encode them field by field; SetState validates what it is
// given (a snapshot is untrusted bytes) and refuses a state the model could
// not have reached in a way that would break it (a counter period of zero,
// a FIFO index out of range), changing nothing then.
//
// SetState never touches IRQ lines: a machine's line levels are part of the
// PIC's state (PICChipState.Lines), saved at the same exit as the devices
// driving them, so restoring every model restores the lines too.
//
// Save and restore run between exits, off the hot path; they may allocate.

// PICChipState is one 8259A.
type PICChipState struct {
	VectorBase  uint8
	ICW3        uint8
	Single      bool
	LevelAll    bool
	NeedICW4    bool
	AutoEOI     bool
	SFNM        bool
	InitStep    uint8
	Initialized bool
	IMR         uint8
	ISR         uint8
	EdgeIRR     uint8
	Lines       uint8
	ELCR        uint8
	PriorityAdd uint8
	RotateAEOI  bool
	ReadISR     bool
	Poll        bool
	SpecialMask bool
}

// PICState is the 8259 pair with its ELCRs.
type PICState struct {
	Master, Slave PICChipState
}

// State returns the pair's state.
func (p *PICPair) State() PICState {
	return PICState{Master: p.master.state(), Slave: p.slave.state()}
}

// SetState loads s (see State).
func (p *PICPair) SetState(s PICState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	p.master.setState(s.Master)
	p.slave.setState(s.Slave)
	return nil
}

// Validate reports what makes s a state no 8259 pair reaches.
func (s PICState) Validate() error {
	if err := s.Master.validate(elcrMasterMask); err != nil {
		return fmt.Errorf("PIC master: %w", err)
	}
	if err := s.Slave.validate(elcrSlaveMask); err != nil {
		return fmt.Errorf("PIC slave: %w", err)
	}
	return nil
}

func (c *pic) state() PICChipState {
	return PICChipState{
		VectorBase: c.vectorBase, ICW3: c.icw3, Single: c.single, LevelAll: c.levelAll,
		NeedICW4: c.needICW4, AutoEOI: c.autoEOI, SFNM: c.sfnm, InitStep: c.initStep,
		Initialized: c.initialized, IMR: c.imr, ISR: c.isr, EdgeIRR: c.edgeIRR, Lines: c.lines,
		ELCR: c.elcr, PriorityAdd: c.priorityAdd, RotateAEOI: c.rotateAEOI, ReadISR: c.readISR,
		Poll: c.poll, SpecialMask: c.specialMask,
	}
}

// setState keeps the wiring (elcrMax, holdMask) the pair was built with.
func (c *pic) setState(s PICChipState) {
	c.vectorBase, c.icw3, c.single, c.levelAll = s.VectorBase, s.ICW3, s.Single, s.LevelAll
	c.needICW4, c.autoEOI, c.sfnm, c.initStep = s.NeedICW4, s.AutoEOI, s.SFNM, s.InitStep
	c.initialized, c.imr, c.isr, c.edgeIRR, c.lines = s.Initialized, s.IMR, s.ISR, s.EdgeIRR, s.Lines
	c.elcr, c.priorityAdd, c.rotateAEOI, c.readISR = s.ELCR, s.PriorityAdd, s.RotateAEOI, s.ReadISR
	c.poll, c.specialMask = s.Poll, s.SpecialMask
}

func (s PICChipState) validate(elcrMax uint8) error {
	switch s.InitStep {
	case 0, 2, 3, 4:
	default:
		return fmt.Errorf("initialization step %d (ICW2-ICW4 or none)", s.InitStep)
	}
	if s.VectorBase&7 != 0 {
		return fmt.Errorf("vector base %#x has low bits set", s.VectorBase)
	}
	if s.PriorityAdd > 7 {
		return fmt.Errorf("highest-priority input %d, beyond IR7", s.PriorityAdd)
	}
	if s.ELCR&^elcrMax != 0 {
		return fmt.Errorf("ELCR %#x sets bits the chipset wires to edge", s.ELCR)
	}
	return nil
}

// PITChannelState is one 8254 counter.
type PITChannelState struct {
	Access        uint8
	ModeBits      uint8
	Mode          uint8
	BCD           bool
	CR            uint16
	LSB           uint8
	WriteMSB      bool
	ReadMSB       bool
	Latched       bool
	LatchValue    uint16
	LatchMSB      bool
	StatusLatched bool
	Status        uint8
	Gate          bool
	State         uint8 // idle, armed, running, paused
	Start, N      int64 // in PIT input clocks since power-on
	NextValid     bool
	NextStart     int64
	NextN         int64
	Held          int64
}

// PITState is the 8254 with channel 0's next interrupt.
type PITState struct {
	Channels [3]PITChannelState
	Armed    bool
	Edge     int64 // channel 0's next rising edge, in input clocks
}

// State returns the PIT's state. It reads no time: the counters hold
// when they were loaded, not their current count.
func (p *PIT) State() PITState {
	s := PITState{Armed: p.armed, Edge: p.edge}
	for i := range p.ch {
		c := &p.ch[i]
		s.Channels[i] = PITChannelState{
			Access: c.access, ModeBits: c.modeBits, Mode: c.mode, BCD: c.bcd, CR: c.cr, LSB: c.lsb,
			WriteMSB: c.writeMSB, ReadMSB: c.readMSB, Latched: c.latched, LatchValue: c.latchValue,
			LatchMSB: c.latchMSB, StatusLatched: c.statusLatched, Status: c.status, Gate: c.gate,
			State: uint8(c.state), Start: c.start, N: c.n, NextValid: c.nextValid,
			NextStart: c.nextStart, NextN: c.nextN, Held: c.held,
		}
	}
	return s
}

// SetState loads s (see State). The PIT keeps reading its own Clock, which
// must continue the saved machine's guest time.
func (p *PIT) SetState(s PITState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for i, cs := range s.Channels {
		p.ch[i] = pitChannel{
			access: cs.Access, modeBits: cs.ModeBits, mode: cs.Mode, bcd: cs.BCD, cr: cs.CR, lsb: cs.LSB,
			writeMSB: cs.WriteMSB, readMSB: cs.ReadMSB, latched: cs.Latched, latchValue: cs.LatchValue,
			latchMSB: cs.LatchMSB, statusLatched: cs.StatusLatched, status: cs.Status, gate: cs.Gate,
			state: pitState(cs.State), start: cs.Start, n: cs.N, nextValid: cs.NextValid,
			nextStart: cs.NextStart, nextN: cs.NextN, held: cs.Held,
		}
	}
	p.armed, p.edge = s.Armed, s.Edge
	return nil
}

// Validate reports what makes s a state no 8254 reaches. What matters most
// is that a periodic counter has a period: the model divides by it.
func (s PITState) Validate() error {
	for i, c := range s.Channels {
		if err := c.validate(); err != nil {
			return fmt.Errorf("PIT channel %d: %w", i, err)
		}
	}
	return nil
}

func (c PITChannelState) validate() error {
	if c.Access < 1 || c.Access > 3 {
		return fmt.Errorf("access mode %d (1 LSB, 2 MSB, 3 both)", c.Access)
	}
	if c.ModeBits > 7 {
		return fmt.Errorf("mode bits %d", c.ModeBits)
	}
	want := c.ModeBits
	if want > 5 {
		want -= 4
	}
	if c.Mode != want {
		return fmt.Errorf("mode %d for mode bits %d", c.Mode, c.ModeBits)
	}
	if c.State > uint8(pitPaused) {
		return fmt.Errorf("counter state %d", c.State)
	}
	const maxPeriod = 65536 // an initial count of 0 in binary
	periodic := c.Mode == 2 || c.Mode == 3
	if periodic && pitState(c.State) == pitRunning && (c.N < 1 || c.N > maxPeriod) {
		return fmt.Errorf("mode %d counting with period %d (1..%d)", c.Mode, c.N, maxPeriod)
	}
	if c.NextValid && (c.NextN < 1 || c.NextN > maxPeriod) {
		return fmt.Errorf("queued period %d (1..%d)", c.NextN, maxPeriod)
	}
	return nil
}

// PortBState is port 0x61.
type PortBState struct {
	Ctrl    uint8
	Refresh bool
}

// State returns port 0x61's state (channel 2's gate is in the PIT's).
func (q *PortB) State() PortBState { return PortBState{Ctrl: q.ctrl, Refresh: q.refresh} }

// SetState loads s (see State).
func (q *PortB) SetState(s PortBState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	q.ctrl, q.refresh = s.Ctrl, s.Refresh
	return nil
}

// Validate reports what makes s a state port 0x61 does not reach.
func (s PortBState) Validate() error {
	if s.Ctrl&^0x0f != 0 {
		return fmt.Errorf("port 0x61: control bits %#x beyond the writable 0x0f", s.Ctrl)
	}
	return nil
}

// UARTState is the 16550A's registers and receive FIFO. Bytes the host
// still holds for it (console input not yet taken) are not the UART's.
type UARTState struct {
	IER, LCR, MCR, SCR uint8
	FCR                uint8
	DLL, DLM           uint8
	LSRErr             uint8
	MSRDelta           uint8
	THRPending         bool
	RX                 [UARTFIFOSize]byte
	RXHead             uint8
	RXLen              uint8
	LastRX             byte
	IRQHigh            bool
}

// State returns the UART's state.
func (u *UART) State() UARTState {
	return UARTState{
		IER: u.ier, LCR: u.lcr, MCR: u.mcr, SCR: u.scr, FCR: u.fcr, DLL: u.dll, DLM: u.dlm,
		LSRErr: u.lsrErr, MSRDelta: u.msrDelta, THRPending: u.thrPending, RX: u.rx,
		RXHead: uint8(u.rxHead), RXLen: uint8(u.rxLen), LastRX: u.lastRX, IRQHigh: u.irqHigh,
	}
}

// SetState loads s (see State). Output counters stay as they are: the
// guest never sees them.
func (u *UART) SetState(s UARTState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	u.ier, u.lcr, u.mcr, u.scr, u.fcr, u.dll, u.dlm = s.IER, s.LCR, s.MCR, s.SCR, s.FCR, s.DLL, s.DLM
	u.lsrErr, u.msrDelta, u.thrPending, u.rx = s.LSRErr, s.MSRDelta, s.THRPending, s.RX
	u.rxHead, u.rxLen, u.lastRX, u.irqHigh = int(s.RXHead), int(s.RXLen), s.LastRX, s.IRQHigh
	return nil
}

// Validate reports what makes s a state the UART does not reach.
func (s UARTState) Validate() error {
	switch {
	case s.IER&^0x0f != 0:
		return fmt.Errorf("UART: IER %#x beyond the four enables", s.IER)
	case s.MCR&^0x1f != 0:
		return fmt.Errorf("UART: MCR %#x beyond the five writable bits", s.MCR)
	case s.FCR&^(fcrEnable|fcrDMA|fcrTrigger) != 0:
		return fmt.Errorf("UART: FCR %#x keeps bits the chip does not", s.FCR)
	case s.RXHead >= UARTFIFOSize:
		return fmt.Errorf("UART: FIFO head %d beyond %d entries", s.RXHead, UARTFIFOSize)
	}
	limit := uint8(1)
	if s.FCR&fcrEnable != 0 {
		limit = UARTFIFOSize
	}
	if s.RXLen > limit {
		return fmt.Errorf("UART: %d bytes received, the receiver holds %d", s.RXLen, limit)
	}
	return nil
}

// RTCState is the MC146818 and its CMOS RAM. The clock is Base plus the
// machine's guest time plus Offset.
type RTCState struct {
	BaseUnixSec  int64
	BaseNanos    int32
	Offset       int64 // time.Duration
	Index        uint8
	NMIDisabled  bool
	RAM          [128]byte
	LastUFSecond int64
}

// State returns the RTC's state. It reads no time.
func (r *RTC) State() RTCState {
	return RTCState{
		BaseUnixSec: r.base.Unix(), BaseNanos: int32(r.base.Nanosecond()), Offset: int64(r.offset),
		Index: r.index, NMIDisabled: r.nmiDisabled, RAM: r.ram, LastUFSecond: r.lastUF,
	}
}

// SetState loads s (see State), power-on wall time included.
func (r *RTC) SetState(s RTCState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	r.base = time.Unix(s.BaseUnixSec, int64(s.BaseNanos)).UTC()
	r.offset, r.index, r.nmiDisabled, r.ram, r.lastUF = time.Duration(s.Offset), s.Index, s.NMIDisabled, s.RAM, s.LastUFSecond
	return nil
}

// Validate reports what makes s a state the RTC does not reach.
func (s RTCState) Validate() error {
	switch {
	case s.BaseNanos < 0 || s.BaseNanos >= 1e9:
		return fmt.Errorf("RTC: base nanoseconds %d", s.BaseNanos)
	case s.Index >= 0x80:
		return fmt.Errorf("RTC: CMOS index %#x beyond 0x7f", s.Index)
	}
	return nil
}

// ACPIPMState is the PM1 registers (the PM timer is the guest clock).
type ACPIPMState struct {
	Sts, En, Cnt uint16
	SCIHigh      bool
}

// State returns the PM registers' state.
func (p *ACPIPM) State() ACPIPMState {
	return ACPIPMState{Sts: p.sts, En: p.en, Cnt: p.cnt, SCIHigh: p.sciHigh}
}

// SetState loads s (see State).
func (p *ACPIPM) SetState(s ACPIPMState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	p.sts, p.en, p.cnt, p.sciHigh = s.Sts, s.En, s.Cnt, s.SCIHigh
	return nil
}

// Validate reports what makes s a state the PM registers do not reach.
func (s ACPIPMState) Validate() error {
	if s.Cnt&(pm1CntSlpEn|pm1CntGblRls) != 0 {
		return errors.New("ACPI PM: PM1 control keeps write-only bits")
	}
	return nil
}

// LegacyState is the small legacy ports.
type LegacyState struct {
	Port92, CF9, I8042Cmd uint8
}

// State returns the legacy ports' state.
func (l *Legacy) State() LegacyState {
	return LegacyState{Port92: l.port92, CF9: l.cf9, I8042Cmd: l.i8042Cmd}
}

// SetState loads s (see State).
func (l *Legacy) SetState(s LegacyState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	l.port92, l.cf9, l.i8042Cmd = s.Port92, s.CF9, s.I8042Cmd
	return nil
}

// Validate reports what makes s a state the legacy ports do not reach.
func (s LegacyState) Validate() error {
	switch {
	case s.Port92&(port92Reset|port92A20) != 0:
		return fmt.Errorf("port 0x92 %#x keeps the reset or A20 bit", s.Port92)
	case s.CF9&^cf9Writable != 0:
		return fmt.Errorf("port 0xcf9 %#x keeps bits beyond %#x", s.CF9, cf9Writable)
	case s.I8042Cmd != 0 && s.I8042Cmd != i8042CmdWriteOutput:
		return fmt.Errorf("i8042 waits for the data of command %#x, which takes none", s.I8042Cmd)
	}
	return nil
}
