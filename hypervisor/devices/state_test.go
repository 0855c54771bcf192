package devices

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// in8 reads one byte from a port device.
func in8(d PortDevice, port uint16) uint8 {
	var b [1]byte
	d.ReadPort(port, b[:])
	return b[0]
}

// TestPITRestoredMidCount saves a PIT with channel 0 periodic and channel
// 2 one-shot, both mid-count, and checks that a PIT restored from it reads
// the same counts, status bytes and OUT pins, and interrupts at the same
// times, as the original from then on.
func TestPITRestoredMidCount(t *testing.T) {
	clk := &manualClock{}
	irqA := &lineRecorder{}
	a := NewPIT(clk, irqA)
	pbA := NewPortB(a)
	picOut(a, 0x43, 0x34) // channel 0, LSB then MSB, mode 2
	picOut(a, 0x40, 0xe8)
	picOut(a, 0x40, 0x03) // 1000
	picOut(a, 0x43, 0xb0) // channel 2, mode 0
	picOut(a, 0x42, 0x10)
	picOut(a, 0x42, 0x27) // 10000
	pbA.WritePort(Port61, []byte{0x01})
	clk.now = 3 * time.Millisecond
	a.Expire(clk.now)
	// A half-read latched count and a half-read plain count survive too.
	picOut(a, 0x43, 0x00)
	_ = in8(a, 0x40)
	_ = in8(a, 0x42)

	clk2 := &manualClock{now: clk.now}
	before := len(irqA.edges)
	irqB := &lineRecorder{}
	b := NewPIT(clk2, irqB)
	pbB := NewPortB(b)
	if err := b.SetState(a.State()); err != nil {
		t.Fatal(err)
	}
	if err := pbB.SetState(pbA.State()); err != nil {
		t.Fatal(err)
	}
	if a.State() != b.State() {
		t.Fatalf("restored state differs:\n%+v\n%+v", a.State(), b.State())
	}
	for step := range 40 {
		now := clk.now + time.Duration(step)*137*time.Microsecond
		clk.now, clk2.now = now, now
		da, oka := a.NextDeadline()
		db, okb := b.NextDeadline()
		if da != db || oka != okb {
			t.Fatalf("step %d: deadlines %v/%v and %v/%v", step, da, oka, db, okb)
		}
		a.Expire(now)
		b.Expire(now)
		if step%3 == 0 {
			picOut(a, 0x43, 0xe2) // read-back: count and status of channel 0
			picOut(b, 0x43, 0xe2)
		}
		for _, port := range []uint16{0x40, 0x40, 0x42} {
			if x, y := in8(a, port), in8(b, port); x != y {
				t.Fatalf("step %d: port %#x reads %#x, restored %#x", step, port, x, y)
			}
		}
		if x, y := in8(pbA, Port61), in8(pbB, Port61); x != y {
			t.Fatalf("step %d: port 0x61 reads %#x, restored %#x", step, x, y)
		}
	}
	if after := len(irqA.edges) - before; after == 0 || after != len(irqB.edges) {
		t.Fatalf("IRQ 0 edges after the save: %d, restored %d", after, len(irqB.edges))
	}
}

func TestPITStateRefusesNoPeriod(t *testing.T) {
	p := NewPIT(&manualClock{}, &lineRecorder{})
	before := p.State()
	s := before
	s.Channels[0] = PITChannelState{Access: 3, ModeBits: 2, Mode: 2, State: uint8(pitRunning), N: 0}
	err := p.SetState(s)
	if err == nil || !strings.Contains(err.Error(), "period 0") {
		t.Fatalf("SetState with a zero period: %v", err)
	}
	if p.State() != before {
		t.Fatal("a refused state changed the PIT")
	}
	s = before
	s.Channels[1].ModeBits, s.Channels[1].Mode = 6, 6
	if err := p.SetState(s); err == nil {
		t.Fatal("mode 6 accepted (it folds onto 2)")
	}
}

// TestUARTRestoredWithPendingBytes: received bytes still in the FIFO, an
// interrupt pending and the divisor set; the restored UART hands out the
// same bytes, IIR and LSR values and drives its line the same way.
func TestUARTRestoredWithPendingBytes(t *testing.T) {
	irqA, outA := &lineRecorder{}, &bytes.Buffer{}
	a := NewUART(COM1Port, irqA, COM1IRQ, outA)
	wr := func(u *UART, off uint16, v uint8) { u.WritePort(COM1Port+off, []byte{v}) }
	wr(a, uartLCR, lcrDLAB)
	wr(a, uartRBR, 1)
	wr(a, uartIER, 0)
	wr(a, uartLCR, 0x03)
	wr(a, uartIIR, fcrEnable|0x80) // FIFO, trigger 8
	wr(a, uartMCR, mcrOUT2|mcrDTR|mcrRTS)
	wr(a, uartIER, ierERBFI|ierETBEI)
	wr(a, uartSCR, 0x5a)
	if n := a.Receive([]byte("hello, world")); n != 12 {
		t.Fatalf("took %d bytes", n)
	}
	for range 3 {
		_ = in8(a, COM1Port+uartRBR)
	}

	irqB, outB := &lineRecorder{}, &bytes.Buffer{}
	b := NewUART(COM1Port, irqB, COM1IRQ, outB)
	if err := b.SetState(a.State()); err != nil {
		t.Fatal(err)
	}
	if len(irqB.edges) != 0 {
		t.Fatal("SetState drove the IRQ line")
	}
	irqB.level = map[uint8]bool{COM1IRQ: irqA.level[COM1IRQ]} // the PIC's restored line
	for i := range 14 {
		for _, off := range []uint16{uartLSR, uartIIR, uartRBR, uartSCR, uartMSR} {
			if x, y := in8(a, COM1Port+off), in8(b, COM1Port+off); x != y {
				t.Fatalf("read %d: register %d reads %#x, restored %#x", i, off, x, y)
			}
		}
		if irqA.level[COM1IRQ] != irqB.level[COM1IRQ] {
			t.Fatalf("read %d: line %v, restored %v", i, irqA.level[COM1IRQ], irqB.level[COM1IRQ])
		}
	}
	wr(a, uartRBR, 'x')
	wr(b, uartRBR, 'x')
	if outA.String() != "x" || outB.String() != "x" {
		t.Fatalf("transmitted %q and %q", outA, outB)
	}
	wr(a, uartLCR, lcrDLAB)
	wr(b, uartLCR, lcrDLAB)
	if x, y := in8(a, COM1Port+uartRBR), in8(b, COM1Port+uartRBR); x != 1 || y != 1 {
		t.Fatalf("divisor latch low %d, restored %d", x, y)
	}
}

func TestUARTStateRefusesBadFIFO(t *testing.T) {
	u := NewUART(COM1Port, nil, COM1IRQ, &bytes.Buffer{})
	s := u.State()
	s.RXHead = UARTFIFOSize
	if err := u.SetState(s); err == nil {
		t.Fatal("FIFO head out of range accepted")
	}
	s = u.State()
	s.RXLen = 2 // FIFO off: the receiver holds one byte
	if err := u.SetState(s); err == nil {
		t.Fatal("two bytes in a 16450-mode receiver accepted")
	}
}

// TestPICRestoredWithRequestsInService: Linux's setup, one IRQ in service,
// more latched, one level line held; the restored pair acknowledges the
// same vectors in the same order.
func TestPICRestoredWithRequestsInService(t *testing.T) {
	l := newLinuxPIC(t, false)
	for _, irq := range []uint8{0, 4, 9, 14} {
		l.unmask(irq)
	}
	picOut(l.p, ELCRPort+1, 1<<1) // IRQ 9 level
	l.p.SetIRQ(9, true)
	l.pulse(0)
	l.pulse(14)
	if v, ok := l.p.Acknowledge(); !ok || v != 0x20 {
		t.Fatalf("first vector %#x %v", v, ok)
	}
	l.pulse(4)
	picOut(l.p, 0x20, 0x0b) // OCW3: read ISR

	b := NewPICPair()
	if err := b.SetState(l.p.State()); err != nil {
		t.Fatal(err)
	}
	a := l.p
	for i := range 6 {
		if x, y := in8(a, PIC1Port), in8(b, PIC1Port); x != y {
			t.Fatalf("round %d: ISR %#x, restored %#x", i, x, y)
		}
		if a.Pending() != b.Pending() {
			t.Fatalf("round %d: pending %v, restored %v", i, a.Pending(), b.Pending())
		}
		va, oka := a.Acknowledge()
		vb, okb := b.Acknowledge()
		if va != vb || oka != okb {
			t.Fatalf("round %d: vector %#x, restored %#x", i, va, vb)
		}
		for _, p := range []*PICPair{a, b} {
			picOut(p, 0x20, 0x20) // non-specific EOI
			if va >= 0x28 {
				picOut(p, 0xa0, 0x20)
			}
		}
		if i == 2 {
			a.SetIRQ(9, false)
			b.SetIRQ(9, false)
		}
	}
}

func TestPICStateRefusesImpossible(t *testing.T) {
	p := NewPICPair()
	s := p.State()
	s.Master.ELCR = 0x01 // the timer is wired edge
	if err := p.SetState(s); err == nil {
		t.Fatal("level-triggered IRQ 0 accepted")
	}
	s = p.State()
	s.Slave.InitStep = 1
	if err := p.SetState(s); err == nil {
		t.Fatal("initialization step 1 accepted")
	}
}

// TestRTCRestoredAfterGuestSetTime: the guest set the clock and switched
// to binary 12-hour mode; the restored RTC reads the same time later.
func TestRTCRestoredAfterGuestSetTime(t *testing.T) {
	ga := newRTCRig(t, rtcBase)
	ga.clk.now = 5 * time.Second
	ga.write(rtcRegB, regBSET|regBDM)
	ga.write(rtcHours, 23)
	ga.write(rtcMinutes, 59)
	ga.write(rtcRegB, regBDM)
	ga.write(0x40, 0x77)
	ga.clk.now = 7*time.Second + 300*time.Millisecond
	_ = ga.read(rtcRegC)
	ga.r.WritePort(CMOSPort, []byte{0x80 | rtcSeconds})

	gb := newRTCRig(t, time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC))
	gb.clk.now = ga.clk.now // the restored machine's guest time goes on
	if err := gb.r.SetState(ga.r.State()); err != nil {
		t.Fatal(err)
	}
	if !gb.r.NMIDisabled() {
		t.Fatal("NMI-disable bit lost")
	}
	// The index register survives: a data read goes to the same byte.
	if x, y := in8(ga.r, CMOSPort+1), in8(gb.r, CMOSPort+1); x != y {
		t.Fatalf("data port %#x, restored %#x", x, y)
	}
	for _, now := range []time.Duration{8 * time.Second, 61 * time.Second, 3601 * time.Second} {
		ga.clk.now, gb.clk.now = now, now
		if x, y := ga.timeRegs(), gb.timeRegs(); x != y {
			t.Fatalf("at %v: time %v, restored %v", now, x, y)
		}
		if x, y := ga.read(rtcRegC), gb.read(rtcRegC); x != y {
			t.Fatalf("at %v: register C %#x, restored %#x", now, x, y)
		}
	}
	if gb.read(0x40) != 0x77 {
		t.Fatal("CMOS RAM lost")
	}
}

func TestACPIPMAndLegacyRestored(t *testing.T) {
	clk := &manualClock{}
	irq := &lineRecorder{}
	a := NewACPIPM(clk, nil, irq)
	a.WritePort(PM1aEventPort+2, []byte{0x00, 0x01}) // PWRBTN_EN
	a.PressPowerButton()
	a.WritePort(PM1aControlPort, []byte{0x01, 0x00})
	b := NewACPIPM(clk, nil, &lineRecorder{})
	if err := b.SetState(a.State()); err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{PM1aEventPort, PM1aEventPort + 1, PM1aEventPort + 3, PM1aControlPort} {
		if x, y := in8(a, port), in8(b, port); x != y {
			t.Fatalf("port %#x reads %#x, restored %#x", port, x, y)
		}
	}

	power := &powerRecorder{}
	la := NewLegacy(power)
	la.WritePort(I8042StatusPort, []byte{i8042CmdWriteOutput})
	la.WritePort(Port92, []byte{0x40})
	lb := NewLegacy(power)
	if err := lb.SetState(la.State()); err != nil {
		t.Fatal(err)
	}
	if in8(lb, Port92) != in8(la, Port92) {
		t.Fatal("port 0x92 differs")
	}
	lb.WritePort(I8042Port, []byte{0x00}) // the output-port byte the restored 0xd1 waits for
	if power.reset != 1 {
		t.Fatalf("restored i8042 command: %d resets, want 1", power.reset)
	}
}

// TestStatesRefuseWhatNoModelReaches covers the small validators.
func TestStatesRefuseWhatNoModelReaches(t *testing.T) {
	for name, err := range map[string]error{
		"port 0x61": PortBState{Ctrl: 0x10}.Validate(),
		"RTC nanos": RTCState{BaseNanos: 1e9}.Validate(),
		"RTC index": RTCState{Index: 0x80}.Validate(),
		"PM":        ACPIPMState{Cnt: pm1CntSlpEn}.Validate(),
		"i8042":     LegacyState{I8042Cmd: 0x20}.Validate(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
