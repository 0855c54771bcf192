package devices

import "testing"

func picOut(d PortDevice, port uint16, v uint8) { d.WritePort(port, []byte{v}) }

func picIn(d PortDevice, port uint16) uint8 {
	b := []byte{0}
	d.ReadPort(port, b)
	return b[0]
}

// linuxPIC drives a PICPair with the sequences of Linux's
// arch/x86/kernel/i8259.c: init_8259A, the cached-mask unmask, the
// handle_level_irq mask_and_ack (specific EOI, to both chips for a slave
// IRQ) and the ISR read used for spurious-IRQ detection.
type linuxPIC struct {
	t    *testing.T
	p    *PICPair
	mask uint16 // cached_irq_mask
}

func newLinuxPIC(t *testing.T, autoEOI bool) *linuxPIC {
	t.Helper()
	l := &linuxPIC{t: t, p: NewPICPair(), mask: 0xffff}
	p := l.p
	picOut(p, 0x21, 0xff)
	picOut(p, 0x20, 0x11)
	picOut(p, 0x21, 0x20)
	picOut(p, 0x21, 1<<2)
	if autoEOI {
		picOut(p, 0x21, 0x03)
	} else {
		picOut(p, 0x21, 0x01)
	}
	picOut(p, 0xa0, 0x11)
	picOut(p, 0xa1, 0x28)
	picOut(p, 0xa1, 2)
	picOut(p, 0xa1, 0x01)
	picOut(p, 0x21, uint8(l.mask))
	picOut(p, 0xa1, uint8(l.mask>>8))
	// The "cascade" irqaction enables IRQ 2.
	l.unmask(2)
	return l
}

func (l *linuxPIC) unmask(irq uint8) {
	l.mask &^= 1 << irq
	if irq&8 != 0 {
		picOut(l.p, 0xa1, uint8(l.mask>>8))
	} else {
		picOut(l.p, 0x21, uint8(l.mask))
	}
}

func (l *linuxPIC) disable(irq uint8) {
	l.mask |= 1 << irq
	if irq&8 != 0 {
		picOut(l.p, 0xa1, uint8(l.mask>>8))
	} else {
		picOut(l.p, 0x21, uint8(l.mask))
	}
}

// irqReal is i8259A_irq_real: is irq in service according to the chip?
func (l *linuxPIC) irqReal(irq uint8) bool {
	if irq < 8 {
		picOut(l.p, 0x20, 0x0b)
		v := picIn(l.p, 0x20) & (1 << irq)
		picOut(l.p, 0x20, 0x0a)
		return v != 0
	}
	picOut(l.p, 0xa0, 0x0b)
	v := picIn(l.p, 0xa0) & (1 << (irq - 8))
	picOut(l.p, 0xa0, 0x0a)
	return v != 0
}

// maskAndAck is mask_and_ack_8259A; it reports the spurious path.
func (l *linuxPIC) maskAndAck(irq uint8) (spurious bool) {
	if l.mask&(1<<irq) != 0 {
		spurious = !l.irqReal(irq)
	}
	l.mask |= 1 << irq
	if irq&8 != 0 {
		picIn(l.p, 0xa1)
		picOut(l.p, 0xa1, uint8(l.mask>>8))
		picOut(l.p, 0xa0, 0x60+(irq&7))
		picOut(l.p, 0x20, 0x60+2)
	} else {
		picIn(l.p, 0x21)
		picOut(l.p, 0x21, uint8(l.mask))
		picOut(l.p, 0x20, 0x60+irq)
	}
	return spurious
}

// handle runs one interrupt the way the vCPU loop and handle_level_irq
// would: INTA, mask+ack, handler, unmask. It returns the vector.
func (l *linuxPIC) handle() uint8 {
	l.t.Helper()
	if !l.p.Pending() {
		l.t.Fatal("handle: nothing pending")
	}
	v, ok := l.p.Acknowledge()
	if !ok {
		l.t.Fatal("Acknowledge: not ok")
	}
	irq := v - 0x20
	if v >= 0x28 {
		irq = v - 0x28 + 8
	}
	if l.maskAndAck(irq) {
		l.t.Fatalf("vector %#x treated as spurious", v)
	}
	l.unmask(irq)
	return v
}

func (l *linuxPIC) isr() (master, slave uint8) {
	picOut(l.p, 0x20, 0x0b)
	picOut(l.p, 0xa0, 0x0b)
	master, slave = picIn(l.p, 0x20), picIn(l.p, 0xa0)
	picOut(l.p, 0x20, 0x0a)
	picOut(l.p, 0xa0, 0x0a)
	return master, slave
}

func (l *linuxPIC) pulse(irq uint8) {
	l.p.SetIRQ(irq, true)
	l.p.SetIRQ(irq, false)
}

func TestPICLinuxDeliversEveryLine(t *testing.T) {
	for irq := uint8(0); irq < 16; irq++ {
		if irq == 2 {
			continue
		}
		l := newLinuxPIC(t, false)
		l.pulse(irq)
		if l.p.Pending() {
			t.Fatalf("IRQ %d: pending while masked", irq)
		}
		l.unmask(irq)
		if !l.p.Pending() {
			t.Fatalf("IRQ %d: not pending after unmask", irq)
		}
		v, ok := l.p.Acknowledge()
		want := 0x20 + irq
		wantM, wantS := uint8(1)<<irq, uint8(0)
		if irq >= 8 {
			want = 0x28 + irq - 8
			wantM, wantS = 1<<2, 1<<(irq-8)
		}
		if !ok || v != want {
			t.Fatalf("IRQ %d: vector %#x ok=%v, want %#x", irq, v, ok, want)
		}
		if m, s := l.isr(); m != wantM || s != wantS {
			t.Fatalf("IRQ %d: ISR %#02x/%#02x, want %#02x/%#02x", irq, m, s, wantM, wantS)
		}
		if l.p.Pending() {
			t.Fatalf("IRQ %d: still pending after INTA", irq)
		}
		if l.maskAndAck(irq) {
			t.Fatalf("IRQ %d: spurious", irq)
		}
		if m, s := l.isr(); m != 0 || s != 0 {
			t.Fatalf("IRQ %d: ISR %#02x/%#02x after EOI", irq, m, s)
		}
		l.unmask(irq)
		if l.p.Pending() {
			t.Fatalf("IRQ %d: pending again without a new edge", irq)
		}
	}
}

func TestPICLinuxProbe(t *testing.T) {
	l := newLinuxPIC(t, false)
	picOut(l.p, 0xa1, 0xff)
	picOut(l.p, 0x21, 0xfb)
	if got := picIn(l.p, 0x21); got != 0xfb {
		t.Fatalf("probe read %#x, want 0xfb", got)
	}
	// i8259A_irq_pending reads the IRR through the command port, which
	// ICW1 selected.
	l.pulse(3)
	if got := picIn(l.p, 0x20); got != 1<<3 {
		t.Fatalf("IRR %#x, want 0x08", got)
	}
}

func TestPICCascade(t *testing.T) {
	l := newLinuxPIC(t, false)
	l.unmask(12)
	l.pulse(12)
	v, _ := l.p.Acknowledge()
	if v != 0x2c {
		t.Fatalf("vector %#x, want 0x2c", v)
	}
	if m, s := l.isr(); m != 0x04 || s != 0x10 {
		t.Fatalf("ISR %#x/%#x, want 0x04/0x10", m, s)
	}
	picOut(l.p, 0xa0, 0x20) // non-specific EOI to both, the other common style
	picOut(l.p, 0x20, 0x20)
	if m, s := l.isr(); m != 0 || s != 0 {
		t.Fatalf("ISR %#x/%#x after EOIs", m, s)
	}
	// Two slave requests: the second arrives after the slave's EOI but
	// before the master's and must still get through.
	l.unmask(8)
	l.pulse(12)
	l.pulse(8)
	if v := l.handle(); v != 0x28 {
		t.Fatalf("first vector %#x, want 0x28", v)
	}
	if v := l.handle(); v != 0x2c {
		t.Fatalf("second vector %#x, want 0x2c", v)
	}
	if l.p.Pending() {
		t.Fatal("pending after both")
	}
}

func TestPICPriorityAndNesting(t *testing.T) {
	l := newLinuxPIC(t, false)
	l.unmask(0)
	l.unmask(4)

	// Simultaneous: IRQ 0 first, IRQ 4 waits for its EOI.
	l.pulse(4)
	l.pulse(0)
	if v, _ := l.p.Acknowledge(); v != 0x20 {
		t.Fatalf("vector %#x, want 0x20", v)
	}
	if l.p.Pending() {
		t.Fatal("IRQ 4 interrupts IRQ 0 in service")
	}
	picOut(l.p, 0x20, 0x20)
	if v, _ := l.p.Acknowledge(); v != 0x24 {
		t.Fatalf("vector %#x, want 0x24", v)
	}

	// IRQ 4 in service: the higher IRQ 0 nests over it.
	l.pulse(0)
	if !l.p.Pending() {
		t.Fatal("IRQ 0 does not nest over IRQ 4")
	}
	if v, _ := l.p.Acknowledge(); v != 0x20 {
		t.Fatalf("nested vector %#x", v)
	}
	if m, _ := l.isr(); m != 0x11 {
		t.Fatalf("ISR %#x, want 0x11", m)
	}
	picOut(l.p, 0x20, 0x20) // non-specific EOI ends the highest: IRQ 0
	if m, _ := l.isr(); m != 0x10 {
		t.Fatalf("ISR %#x after one EOI, want 0x10", m)
	}
	picOut(l.p, 0x20, 0x20)

	// A lower-priority request waits while a higher one is in service.
	l.pulse(3)
	l.unmask(3)
	l.pulse(5)
	l.unmask(5)
	if v, _ := l.p.Acknowledge(); v != 0x23 {
		t.Fatalf("vector %#x, want 0x23", v)
	}
	if l.p.Pending() {
		t.Fatal("IRQ 5 nests over IRQ 3")
	}
	picOut(l.p, 0x20, 0x63)
	if v, _ := l.p.Acknowledge(); v != 0x25 {
		t.Fatalf("vector %#x, want 0x25", v)
	}
}

func TestPICLevelTriggered(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(p *PICPair)
		irq   uint8
	}{
		{"ELCR slave IRQ 9", func(p *PICPair) { p.WritePort(ELCRPort, []byte{0x00, 0x02}) }, 9},
		{"ELCR master IRQ 5", func(p *PICPair) { picOut(p, ELCRPort, 0x20) }, 5},
		{"ICW1 LTIM", func(p *PICPair) {
			picOut(p, 0x20, 0x19)
			picOut(p, 0x21, 0x20)
			picOut(p, 0x21, 0x04)
			picOut(p, 0x21, 0x01)
			picOut(p, 0x21, 0x00)
		}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLinuxPIC(t, false)
			tc.setup(l.p)
			l.unmask(tc.irq)
			l.p.SetIRQ(tc.irq, true)
			v1 := l.handle()
			if !l.p.Pending() {
				t.Fatal("level line still high but not pending after EOI")
			}
			v2 := l.handle()
			if v1 != v2 {
				t.Fatalf("vectors %#x then %#x", v1, v2)
			}
			l.p.SetIRQ(tc.irq, false)
			if l.p.Pending() {
				t.Fatal("pending after line lowered")
			}
			// IRR follows the line, even when masked.
			l.disable(tc.irq)
			l.p.SetIRQ(tc.irq, true)
			port, bit := uint16(0x20), uint8(1)<<(tc.irq&7)
			if tc.irq >= 8 {
				port = 0xa0
			}
			if picIn(l.p, port)&bit == 0 {
				t.Fatal("IRR bit clear with line high")
			}
			if l.p.Pending() {
				t.Fatal("masked level line pending")
			}
			l.p.SetIRQ(tc.irq, false)
			if picIn(l.p, port)&bit != 0 {
				t.Fatal("IRR bit set with line low")
			}
			l.unmask(tc.irq)
			if l.p.Pending() {
				t.Fatal("pending after the line dropped while masked")
			}
		})
	}
	p := NewPICPair()
	p.WritePort(ELCRPort, []byte{0xff, 0xff})
	if m, s := picIn(p, ELCRPort), picIn(p, ELCRPort+1); m != 0xf8 || s != 0xde {
		t.Fatalf("ELCR %#x/%#x, want the PIIX writable bits 0xf8/0xde", m, s)
	}
}

func TestPICEdgeNeedsNewRisingEdge(t *testing.T) {
	l := newLinuxPIC(t, false)
	l.unmask(4)
	l.p.SetIRQ(4, true)
	l.handle()
	l.p.SetIRQ(4, true) // still high: no edge
	if l.p.Pending() {
		t.Fatal("pending without a new edge")
	}
	l.p.SetIRQ(4, false)
	if l.p.Pending() {
		t.Fatal("pending on falling edge")
	}
	l.p.SetIRQ(4, true)
	if !l.p.Pending() {
		t.Fatal("rising edge lost")
	}
	// A latched edge survives the line dropping before INTA (devices
	// pulse their lines).
	l.handle()
	l.p.SetIRQ(4, false)
	l.pulse(4)
	if v, _ := l.p.Acknowledge(); v != 0x24 {
		t.Fatalf("pulsed edge: vector %#x", v)
	}
}

func TestPICAutoEOI(t *testing.T) {
	l := newLinuxPIC(t, true)
	l.unmask(0)
	l.unmask(1)
	l.pulse(1)
	if v, _ := l.p.Acknowledge(); v != 0x21 {
		t.Fatalf("vector %#x", v)
	}
	if m, _ := l.isr(); m != 0 {
		t.Fatalf("ISR %#x in auto-EOI mode", m)
	}
	// No EOI needed: the same line again, and a lower one, go through.
	l.pulse(1)
	if v, _ := l.p.Acknowledge(); v != 0x21 {
		t.Fatalf("second vector %#x", v)
	}

	// Rotate on auto EOI: a serviced line drops to lowest priority.
	picOut(l.p, 0x20, 0x80)
	l.pulse(0)
	l.pulse(1)
	if v, _ := l.p.Acknowledge(); v != 0x20 {
		t.Fatalf("vector %#x, want 0x20", v)
	}
	l.pulse(0)
	if v, _ := l.p.Acknowledge(); v != 0x21 {
		t.Fatalf("after rotation vector %#x, want 0x21", v)
	}
	if v, _ := l.p.Acknowledge(); v != 0x20 {
		t.Fatalf("vector %#x, want 0x20", v)
	}
}

func TestPICRotationCommands(t *testing.T) {
	for _, tc := range []struct {
		name string
		ocw2 []uint8
		want []uint8 // acknowledge order of IRQs 0, 4, 6 all raised
	}{
		{"fully nested", nil, []uint8{0, 4, 6}},
		{"set priority, IR3 lowest", []uint8{0xc3}, []uint8{4, 6, 0}},
		{"set priority, IR5 lowest", []uint8{0xc5}, []uint8{6, 0, 4}},
		{"no-op", []uint8{0x40}, []uint8{0, 4, 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLinuxPIC(t, false)
			for _, v := range tc.ocw2 {
				picOut(l.p, 0x20, v)
			}
			for _, irq := range []uint8{0, 4, 6} {
				l.unmask(irq)
				l.pulse(irq)
			}
			for _, irq := range tc.want {
				v, _ := l.p.Acknowledge()
				if v != 0x20+irq {
					t.Fatalf("vector %#x, want %#x", v, 0x20+irq)
				}
				picOut(l.p, 0x20, 0x60+irq)
			}
		})
	}

	// Rotate on non-specific EOI: equal-priority round robin.
	l := newLinuxPIC(t, false)
	for _, irq := range []uint8{0, 1, 3} {
		l.unmask(irq)
	}
	var got []uint8
	for range 6 {
		for _, irq := range []uint8{0, 1, 3} {
			l.pulse(irq)
		}
		v, _ := l.p.Acknowledge()
		got = append(got, v-0x20)
		picOut(l.p, 0x20, 0xa0)
	}
	// 0, then 1 (0 went lowest), then 3, then 0 again...
	want := []uint8{0, 1, 3, 0, 1, 3}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("round robin %v, want %v", got, want)
		}
	}
	// Rotate on specific EOI.
	picOut(l.p, 0x20, 0xe3) // IR3 lowest, IR4 highest
	l.unmask(5)
	l.pulse(5)
	if v, _ := l.p.Acknowledge(); v != 0x25 {
		t.Fatalf("vector %#x after rotate-specific, want 0x25 (IR0,1,3 pending lower)", v)
	}
}

func TestPICOCW3Reads(t *testing.T) {
	l := newLinuxPIC(t, false)
	l.unmask(1)
	l.pulse(1)
	l.pulse(6) // masked: still in the IRR
	if got := picIn(l.p, 0x20); got != 0x42 {
		t.Fatalf("IRR %#x, want 0x42", got)
	}
	l.p.Acknowledge()
	picOut(l.p, 0x20, 0x0b)
	for range 2 { // the selection persists across reads
		if got := picIn(l.p, 0x20); got != 0x02 {
			t.Fatalf("ISR %#x, want 0x02", got)
		}
	}
	picOut(l.p, 0x20, 0x08) // RR=0: no change of selection
	if got := picIn(l.p, 0x20); got != 0x02 {
		t.Fatalf("ISR %#x after OCW3 without RR", got)
	}
	picOut(l.p, 0x20, 0x0a)
	if got := picIn(l.p, 0x20); got != 0x40 {
		t.Fatalf("IRR %#x, want 0x40", got)
	}
	if got := picIn(l.p, 0x21); got != uint8(l.mask) {
		t.Fatalf("IMR %#x, want %#x", got, uint8(l.mask))
	}
}

func TestPICPoll(t *testing.T) {
	l := newLinuxPIC(t, false)
	picOut(l.p, 0x20, 0x0c)
	if got := picIn(l.p, 0x20); got != 0 {
		t.Fatalf("poll with nothing pending %#x", got)
	}
	// The poll flag is consumed by one read.
	if got := picIn(l.p, 0x20); got != 0 {
		t.Fatalf("IRR %#x", got)
	}
	l.unmask(5)
	l.unmask(3)
	l.pulse(5)
	l.pulse(3)
	picOut(l.p, 0x20, 0x0c)
	if got := picIn(l.p, 0x20); got != 0x83 {
		t.Fatalf("poll %#x, want 0x83", got)
	}
	if m, _ := l.isr(); m != 0x08 {
		t.Fatalf("ISR %#x after poll, want 0x08", m)
	}
	picOut(l.p, 0x20, 0x20)
	picOut(l.p, 0x20, 0x0c)
	if got := picIn(l.p, 0x21); got != 0x85 { // either port
		t.Fatalf("poll %#x, want 0x85", got)
	}
	picOut(l.p, 0x20, 0x20)
	if l.p.Pending() {
		t.Fatal("pending after polled requests")
	}
}

func TestPICSpurious(t *testing.T) {
	l := newLinuxPIC(t, false)
	// Nothing requested: IR7's vector, nothing in service, and Linux's
	// ISR check classifies IRQ 7 as spurious.
	v, ok := l.p.Acknowledge()
	if !ok || v != 0x27 {
		t.Fatalf("spurious vector %#x ok=%v, want 0x27", v, ok)
	}
	if l.irqReal(7) {
		t.Fatal("IRQ 7 in service after spurious INTA")
	}
	if !l.maskAndAck(7) {
		t.Fatal("Linux would not see IRQ 7 as spurious")
	}

	// The request vanishes between Pending and INTA (masked meanwhile).
	l = newLinuxPIC(t, false)
	l.unmask(3)
	l.pulse(3)
	if !l.p.Pending() {
		t.Fatal("not pending")
	}
	l.disable(3)
	if v, _ := l.p.Acknowledge(); v != 0x27 {
		t.Fatalf("vector %#x, want 0x27", v)
	}

	// Same behind the cascade: the slave's INT drops, so master IR2
	// no longer requests and the master answers with IR7.
	l = newLinuxPIC(t, false)
	l.unmask(12)
	l.pulse(12)
	if !l.p.Pending() {
		t.Fatal("not pending")
	}
	l.disable(12)
	if l.p.Pending() {
		t.Fatal("master IR2 still requests after the slave's request was masked")
	}
	if v, _ := l.p.Acknowledge(); v != 0x27 {
		t.Fatalf("vector %#x, want 0x27", v)
	}
	if m, s := l.isr(); m != 0 || s != 0 {
		t.Fatalf("ISR %#x/%#x, want 0/0", m, s)
	}
	// Unmasked again, the still-latched slave request comes through.
	l.unmask(12)
	if v := l.handle(); v != 0x2c {
		t.Fatalf("vector %#x, want 0x2c", v)
	}
}

func TestPICSpecialMaskMode(t *testing.T) {
	l := newLinuxPIC(t, false)
	l.unmask(4)
	l.unmask(6)
	l.pulse(4)
	l.p.Acknowledge()
	l.pulse(6)
	if l.p.Pending() {
		t.Fatal("IRQ 6 nests over IRQ 4 without special mask")
	}
	picOut(l.p, 0x20, 0x68) // set special mask mode
	l.disable(4)
	if v, _ := l.p.Acknowledge(); v != 0x26 {
		t.Fatalf("vector %#x, want 0x26 under special mask", v)
	}
	picOut(l.p, 0x20, 0x48) // reset special mask mode
	picOut(l.p, 0x20, 0x66)
	picOut(l.p, 0x20, 0x64)
	if m, _ := l.isr(); m != 0 {
		t.Fatalf("ISR %#x", m)
	}
}

func TestPICUninitialized(t *testing.T) {
	p := NewPICPair()
	p.SetIRQ(4, true)
	if p.Pending() {
		t.Fatal("pending before initialization")
	}
	if _, ok := p.Acknowledge(); ok {
		t.Fatal("acknowledge ok before initialization")
	}
	// Mid-sequence is not initialized either; finishing it, a line
	// already high needs a new edge (ICW1 resets the edge sense).
	picOut(p, 0x20, 0x11)
	picOut(p, 0x21, 0x20)
	if p.Pending() {
		t.Fatal("pending mid-initialization")
	}
	picOut(p, 0x21, 0x04)
	picOut(p, 0x21, 0x01)
	if p.Pending() {
		t.Fatal("a line high across ICW1 counts as an edge")
	}
	p.SetIRQ(4, false)
	p.SetIRQ(4, true)
	if v, _ := p.Acknowledge(); v != 0x24 {
		t.Fatalf("vector %#x", v)
	}
	// Ports outside the pair read as open bus.
	if got := picIn(p, 0x22); got != 0xff {
		t.Fatalf("port 0x22 read %#x", got)
	}
}

func TestPICSlaveNesting(t *testing.T) {
	for _, tc := range []struct {
		name      string
		masterICW uint8
		nests     bool
	}{
		{"fully nested: slave locked out while IR2 in service", 0x01, false},
		{"special fully nested: higher slave request nests", 0x11, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPICPair()
			for _, w := range [][2]uint8{
				{0x20, 0x11}, {0x21, 0x20}, {0x21, 0x04}, {0x21, tc.masterICW},
				{0xa0, 0x11}, {0xa1, 0x28}, {0xa1, 0x02}, {0xa1, 0x01},
			} {
				picOut(p, uint16(w[0]), w[1])
			}
			p.SetIRQ(12, true)
			if v, _ := p.Acknowledge(); v != 0x2c {
				t.Fatalf("vector %#x", v)
			}
			p.SetIRQ(8, true)
			if p.Pending() != tc.nests {
				t.Fatalf("Pending = %v with IRQ 12 in service and IRQ 8 requested", !tc.nests)
			}
			if !tc.nests {
				picOut(p, 0xa0, 0x20)
				picOut(p, 0x20, 0x20)
			}
			if v, _ := p.Acknowledge(); v != 0x28 {
				t.Fatalf("vector %#x, want 0x28", v)
			}
		})
	}

	// Slave in auto-EOI with two requests: after the first INTA the
	// slave still requests, and the master must see it once IR2's EOI
	// arrives.
	p := NewPICPair()
	for _, w := range [][2]uint8{
		{0x20, 0x11}, {0x21, 0x20}, {0x21, 0x04}, {0x21, 0x01},
		{0xa0, 0x11}, {0xa1, 0x28}, {0xa1, 0x02}, {0xa1, 0x03},
	} {
		picOut(p, uint16(w[0]), w[1])
	}
	p.SetIRQ(12, true)
	p.SetIRQ(8, true)
	if v, _ := p.Acknowledge(); v != 0x28 {
		t.Fatalf("vector %#x", v)
	}
	if p.Pending() {
		t.Fatal("pending with IR2 in service on the master")
	}
	picOut(p, 0x20, 0x62)
	if v, _ := p.Acknowledge(); v != 0x2c {
		t.Fatalf("second slave request stranded: vector %#x", v)
	}
}
