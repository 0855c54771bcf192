package devices

// ELCRPort is the first of the two edge/level control registers that
// PIIX-style chipsets put beside the 8259 pair: 0x4d0 holds the trigger
// mode of IRQ 0-7, 0x4d1 that of IRQ 8-15 (bit set = level). Linux's ACPI
// code writes it to make the SCI (IRQ 9) level-triggered.
const ELCRPort uint16 = 0x4d0

// picCascadeIR is the master input the slave's INT output is wired to on
// every PC/AT-compatible machine.
const picCascadeIR = 2

// ELCR bits that chipsets hard-wire to edge: the timer, keyboard and
// cascade on the master, the RTC and FPU error on the slave (PIIX3).
const (
	elcrMasterMask uint8 = 0xf8
	elcrSlaveMask  uint8 = 0xde
)

// pic models one Intel 8259A as documented in its datasheet: the
// interrupt request register (edge latches plus, for level-triggered
// inputs, the live line), the in-service and mask registers, the priority
// resolver with rotation, and the ICW/OCW programming interface. It knows
// nothing about cascading; PICPair wires two of them together.
type pic struct {
	// Set by the ICW sequence.
	vectorBase uint8 // ICW2, T7-T3
	icw3       uint8
	single     bool // ICW1 SNGL: no cascade
	levelAll   bool // ICW1 LTIM: every input level-triggered
	needICW4   bool
	autoEOI    bool // ICW4 AEOI
	sfnm       bool // ICW4 special fully nested mode
	initStep   uint8
	// initialized is false from power-on until the first complete ICW
	// sequence. Until then the vector base is meaningless, and asserting
	// INT would make the vCPU loop inject an exception vector.
	initialized bool

	imr     uint8
	isr     uint8
	edgeIRR uint8 // requests latched by rising edges on edge-triggered inputs
	lines   uint8 // current level of each IR input
	// holdMask marks edge-triggered inputs whose request is withdrawn
	// when the line drops before INTA, as the datasheet requires of every
	// input. PICPair sets it only for the cascade input, so a slave
	// that stops requesting takes its request off the master; device
	// lines are pulsed (IRQSink), so their edges must stay latched.
	holdMask uint8
	elcr     uint8
	elcrMax  uint8

	// priorityAdd is the IR that currently has the highest priority;
	// rotation moves it, fully nested mode keeps it at 0.
	priorityAdd uint8
	rotateAEOI  bool
	readISR     bool // OCW3 RR/RIS: command port reads ISR instead of IRR
	poll        bool // OCW3 P: the next read is a poll (an INTA in disguise)
	specialMask bool // OCW3 SMM
}

func (c *pic) levelMask() uint8 {
	if c.levelAll {
		return 0xff
	}
	return c.elcr
}

// irr is the request register as the priority resolver (and an OCW3 IRR
// read) sees it: level-triggered inputs request for as long as the line
// is high, edge-triggered ones from the rising edge until acknowledged.
func (c *pic) irr() uint8 {
	lvl := c.levelMask()
	edge := c.edgeIRR &^ lvl &^ (c.holdMask &^ c.lines)
	return edge | c.lines&lvl
}

func (c *pic) setLine(ir uint8, high bool) {
	bit := uint8(1) << ir
	if high {
		// Edge inputs latch only on the low-to-high transition; a
		// device that pulses high then low leaves the request latched.
		if c.lines&bit == 0 && c.levelMask()&bit == 0 {
			c.edgeIRR |= bit
		}
		c.lines |= bit
	} else {
		c.lines &^= bit
	}
}

// best returns the highest-priority IR set in mask, as a priority rank
// (0 = highest) under the current rotation.
func (c *pic) best(mask uint8) (rank uint8, ok bool) {
	for r := uint8(0); r < 8; r++ {
		if mask&(1<<((r+c.priorityAdd)&7)) != 0 {
			return r, true
		}
	}
	return 0, false
}

func (c *pic) irOf(rank uint8) uint8 { return (rank + c.priorityAdd) & 7 }

// requested reports the IR the chip would present on INT: the
// highest-priority unmasked request that outranks everything in service.
func (c *pic) requested() (ir uint8, ok bool) {
	if !c.initialized {
		return 0, false
	}
	p, ok := c.best(c.irr() &^ c.imr)
	if !ok {
		return 0, false
	}
	inService := c.isr
	if c.specialMask {
		// Special mask mode exists so a handler can mask its own level
		// and let lower ones through: masked levels stop inhibiting.
		inService &^= c.imr
	}
	if q, busy := c.best(inService); busy {
		if p > q || (p == q && !c.sfnm) {
			return 0, false
		}
	}
	return c.irOf(p), true
}

// intack performs the chip's side of an INTA cycle (or poll) for ir.
func (c *pic) intack(ir uint8) {
	bit := uint8(1) << ir
	c.edgeIRR &^= bit
	if c.autoEOI {
		if c.rotateAEOI {
			c.priorityAdd = (ir + 1) & 7
		}
		return
	}
	c.isr |= bit
}

func (c *pic) pollRead() uint8 {
	c.poll = false
	ir, ok := c.requested()
	if !ok {
		return 0
	}
	c.intack(ir)
	return 0x80 | ir
}

func (c *pic) read(a0 bool) uint8 {
	if c.poll {
		return c.pollRead()
	}
	if a0 {
		return c.imr
	}
	if c.readISR {
		return c.isr
	}
	return c.irr()
}

func (c *pic) write(a0 bool, v uint8) {
	if !a0 {
		switch {
		case v&0x10 != 0:
			c.icw1(v)
		case v&0x08 != 0:
			c.ocw3(v)
		default:
			c.ocw2(v)
		}
		return
	}
	switch c.initStep {
	case 2:
		c.vectorBase = v & 0xf8
		c.initStep = 3
		if c.single {
			c.afterICW3()
		}
	case 3:
		c.icw3 = v
		c.afterICW3()
	case 4:
		// Bit 0 (8086 mode) is assumed: MCS-80 vectoring has no
		// meaning on x86. BUF and M/S only steer the SP/EN pin.
		c.autoEOI = v&0x02 != 0
		c.sfnm = v&0x10 != 0
		c.finishInit()
	default:
		c.imr = v
	}
}

func (c *pic) icw1(v uint8) {
	// The datasheet's ICW1 side effects: edge sense reset (a line
	// already high needs a new rising edge), IMR cleared, IR7 lowest
	// priority, special mask mode off, status read set to IRR, and every
	// ICW4 function zero until ICW4 says otherwise.
	c.edgeIRR = 0
	c.imr = 0
	c.isr = 0
	c.priorityAdd = 0
	c.rotateAEOI = false
	c.specialMask = false
	c.readISR = false
	c.poll = false
	c.autoEOI = false
	c.sfnm = false
	c.single = v&0x02 != 0
	c.levelAll = v&0x08 != 0
	c.needICW4 = v&0x01 != 0
	c.initialized = false
	c.initStep = 2
}

func (c *pic) afterICW3() {
	if c.needICW4 {
		c.initStep = 4
		return
	}
	c.finishInit()
}

func (c *pic) finishInit() {
	c.initStep = 0
	c.initialized = true
}

func (c *pic) ocw2(v uint8) {
	level := v & 7
	switch v >> 5 {
	case 0: // clear rotate in automatic EOI mode
		c.rotateAEOI = false
	case 1: // non-specific EOI
		c.eoiHighest()
	case 2: // no operation
	case 3: // specific EOI
		c.isr &^= 1 << level
	case 4: // set rotate in automatic EOI mode
		c.rotateAEOI = true
	case 5: // rotate on non-specific EOI
		if ir, ok := c.eoiHighest(); ok {
			c.priorityAdd = (ir + 1) & 7
		}
	case 6: // set priority: level becomes the lowest
		c.priorityAdd = (level + 1) & 7
	case 7: // rotate on specific EOI
		c.isr &^= 1 << level
		c.priorityAdd = (level + 1) & 7
	}
}

func (c *pic) eoiHighest() (ir uint8, ok bool) {
	r, ok := c.best(c.isr)
	if !ok {
		return 0, false
	}
	ir = c.irOf(r)
	c.isr &^= 1 << ir
	return ir, true
}

func (c *pic) ocw3(v uint8) {
	if v&0x40 != 0 {
		c.specialMask = v&0x20 != 0
	}
	if v&0x04 != 0 {
		c.poll = true
	}
	if v&0x02 != 0 {
		c.readISR = v&0x01 != 0
	}
}

func (c *pic) setELCR(v uint8) {
	c.elcr = v & c.elcrMax
	// A latched edge means nothing on an input that is now level
	// triggered: its request follows the line from here on.
	c.edgeIRR &^= c.levelMask()
}

// PICPair models the two cascaded 8259A interrupt controllers of a PC/AT
// (master at 0x20-0x21, slave at 0xa0-0xa1 on master IR2) together with the
// PIIX edge/level control registers at 0x4d0-0x4d1. It is the guest's only
// interrupt controller when KVM's in-kernel irqchip is off (DESIGN.md,
// determinism contract, rule 1): devices drive its lines through SetIRQ,
// and the vCPU exit loop asks Pending and, when the guest can take an
// interrupt, calls Acknowledge and injects the vector with KVM_INTERRUPT.
//
// Emulated: ICW1-ICW4 (cascade or single, edge or level via LTIM, auto
// EOI, special fully nested mode), OCW1 masks, every OCW2 command
// (non-specific/specific EOI, the rotations, set priority), OCW3 (IRR/ISR
// read select, poll, special mask mode), ELCR per-line trigger mode and
// spurious IR7 vectors. Not emulated: MCS-80 mode, buffered mode pins.
//
// Power-on state: both chips uninitialized, asserting nothing until the
// guest has written a complete ICW sequence (there is no BIOS to do it).
type PICPair struct {
	master, slave pic
}

var (
	_ PortDevice = (*PICPair)(nil)
	_ IRQSink    = (*PICPair)(nil)
)

// NewPICPair returns a pair in power-on state.
func NewPICPair() *PICPair {
	p := &PICPair{}
	p.master.elcrMax = elcrMasterMask
	p.master.holdMask = 1 << picCascadeIR
	p.slave.elcrMax = elcrSlaveMask
	return p
}

// SetIRQ drives ISA interrupt line 0-15. Line 2 is the internal cascade
// (ISA devices wired to IRQ2 arrive on IRQ9), so it and lines above 15
// are ignored.
func (p *PICPair) SetIRQ(line uint8, high bool) {
	switch {
	case line < 8 && line != picCascadeIR:
		p.master.setLine(line, high)
	case line >= 8 && line < 16:
		p.slave.setLine(line-8, high)
	default:
		return
	}
	p.updateCascade()
}

// updateCascade feeds the slave's INT output into master IR2; it must
// follow every change to slave state.
func (p *PICPair) updateCascade() {
	_, ok := p.slave.requested()
	p.master.setLine(picCascadeIR, ok)
}

func (p *PICPair) cascaded() bool {
	return !p.master.single && p.master.icw3&(1<<picCascadeIR) != 0
}

// Pending reports whether the master asserts INT: an unmasked request
// with priority above everything in service.
func (p *PICPair) Pending() bool {
	_, ok := p.master.requested()
	return ok
}

// Acknowledge runs the CPU's INTA cycle and returns the vector to inject.
// The highest-priority request moves from IRR to ISR (or nowhere in auto
// EOI mode); a slave request goes through the cascade and sets both ISRs.
// If the request vanished since Pending (the guest masked it, or a level
// line dropped), the master answers with its IR7 vector and sets no ISR
// bit, as real hardware does; guests recognise this as a spurious
// interrupt. (The slave's IR7 answer to a master IR2 acknowledge with
// nothing behind it is coded too, but with the master following the
// slave's INT exactly it does not arise.)
// ok is false only while the master has not been initialized, when there
// is no vector to give.
func (p *PICPair) Acknowledge() (vector uint8, ok bool) {
	if !p.master.initialized {
		return 0, false
	}
	ir, ok := p.master.requested()
	if !ok {
		return p.master.vectorBase | 7, true
	}
	p.master.intack(ir)
	if ir != picCascadeIR || !p.cascaded() {
		p.updateCascade()
		return p.master.vectorBase | ir, true
	}
	sir, sok := p.slave.requested()
	if sok {
		p.slave.intack(sir)
	} else {
		sir = 7
	}
	// The slave drops INT during INTA; if it still requests afterwards
	// (auto EOI on the slave), master IR2 must see a fresh edge or the
	// request would be stranded behind a consumed latch.
	p.master.lines &^= 1 << picCascadeIR
	p.updateCascade()
	return p.slave.vectorBase | sir, true
}

// ReadPort implements PortDevice for 0x20-0x21, 0xa0-0xa1 and
// 0x4d0-0x4d1; wider accesses are split into byte accesses, as the ISA
// bus does.
func (p *PICPair) ReadPort(port uint16, data []byte) {
	for i := range data {
		data[i] = p.readByte(port + uint16(i))
	}
}

// WritePort implements PortDevice; see ReadPort.
func (p *PICPair) WritePort(port uint16, data []byte) {
	for i, v := range data {
		p.writeByte(port+uint16(i), v)
	}
}

func (p *PICPair) readByte(port uint16) uint8 {
	var v uint8
	switch port {
	case PIC1Port, PIC1Port + 1:
		v = p.master.read(port&1 != 0)
	case PIC2Port, PIC2Port + 1:
		v = p.slave.read(port&1 != 0)
	case ELCRPort:
		return p.master.elcr
	case ELCRPort + 1:
		return p.slave.elcr
	default:
		return 0xff
	}
	// A poll read acknowledges, which may change the slave's output.
	p.updateCascade()
	return v
}

func (p *PICPair) writeByte(port uint16, v uint8) {
	switch port {
	case PIC1Port, PIC1Port + 1:
		p.master.write(port&1 != 0, v)
	case PIC2Port, PIC2Port + 1:
		p.slave.write(port&1 != 0, v)
	case ELCRPort:
		p.master.setELCR(v)
	case ELCRPort + 1:
		p.slave.setELCR(v)
	default:
		return
	}
	p.updateCascade()
}
