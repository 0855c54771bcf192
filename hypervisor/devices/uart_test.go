package devices

import (
	"bytes"
	"testing"
)

type uartRig struct {
	t   *testing.T
	u   *UART
	irq *lineRecorder
	out *bytes.Buffer
}

func newUARTRig(t *testing.T) *uartRig {
	r := &uartRig{t: t, irq: &lineRecorder{}, out: &bytes.Buffer{}}
	r.u = NewUART(COM1Port, r.irq, COM1IRQ, r.out)
	return r
}

func (r *uartRig) in(off uint16) uint8 {
	var b [1]byte
	r.u.ReadPort(COM1Port+off, b[:])
	return b[0]
}

func (r *uartRig) outb(off uint16, v uint8) { r.u.WritePort(COM1Port+off, []byte{v}) }

func (r *uartRig) line() bool { return r.irq.level[COM1IRQ] }

func (r *uartRig) wantIIR(want uint8) {
	r.t.Helper()
	if got := r.in(uartIIR); got != want {
		r.t.Fatalf("IIR = %#02x, want %#02x", got, want)
	}
}

func (r *uartRig) wantLine(want bool) {
	r.t.Helper()
	if r.line() != want {
		r.t.Fatalf("IRQ line = %v, want %v", r.line(), want)
	}
}

// linuxAutoconfig follows the register accesses of Linux's 8250 autoconfig()
// and autoconfig_16550a() (drivers/tty/serial/8250/8250_port.c) for a port
// without UPF_SKIP_TEST, and returns the type it would settle on.
func linuxAutoconfig(r *uartRig) string {
	// Existence test: IER must hold exactly what is written to its low
	// nibble.
	scratch := r.in(uartIER)
	r.outb(uartIER, 0)
	scratch2 := r.in(uartIER) & 0x0f
	r.outb(uartIER, 0x0f)
	scratch3 := r.in(uartIER) & 0x0f
	r.outb(uartIER, scratch)
	if scratch2 != 0 || scratch3 != 0x0f {
		return "none (IER test)"
	}
	saveMCR := r.in(uartMCR)
	saveLCR := r.in(uartLCR)

	// Loopback test: RTS and OUT2 come back as CTS and DCD.
	r.outb(uartMCR, mcrLoop|0x0a)
	status := r.in(uartMSR) & 0xf0
	r.outb(uartMCR, saveMCR)
	if status != 0x90 {
		return "none (loop test)"
	}

	r.outb(uartLCR, 0xbf)
	r.outb(uartIIR, 0) // EFR on parts that have one; FCR here
	r.outb(uartLCR, 0)
	r.outb(uartIIR, fcrEnable)
	kind := "?"
	switch r.in(uartIIR) >> 6 {
	case 0:
		kind = "8250"
		old := r.in(uartSCR)
		r.outb(uartSCR, 0xa5)
		s1 := r.in(uartSCR)
		r.outb(uartSCR, 0x5a)
		s2 := r.in(uartSCR)
		r.outb(uartSCR, old)
		if s1 == 0xa5 && s2 == 0x5a {
			kind = "16450"
		}
	case 1:
		kind = "unknown"
	case 2:
		kind = "16550"
	case 3:
		kind = autoconfig16550A(r)
	}
	r.outb(uartLCR, saveLCR)
	r.outb(uartMCR, saveMCR)
	r.outb(uartIIR, fcrEnable|fcrClearRX|fcrClearTX)
	r.outb(uartIIR, 0)
	r.in(uartRBR)
	r.outb(uartIER, 0)
	return kind
}

func autoconfig16550A(r *uartRig) string {
	r.outb(uartLCR, 0x80)
	if r.in(uartIIR) == 0 {
		return "ST16650 (EFR with DLAB)"
	}
	r.outb(uartLCR, 0xbf)
	if r.in(uartIIR) == 0 {
		return "ST16650V2 (EFR)"
	}
	// National Semiconductor bank switching: MCR.LOOP must not show up in
	// "EXCR1" (offset 2 with LCR=0xE0).
	r.outb(uartLCR, 0)
	s1 := r.in(uartMCR)
	r.outb(uartLCR, 0xe0)
	s2 := r.in(uartIIR)
	if (s1^s2)&mcrLoop == 0 {
		r.outb(uartLCR, 0)
		r.outb(uartMCR, s1^mcrLoop)
		r.outb(uartLCR, 0xe0)
		s2 = r.in(uartIIR)
		r.outb(uartLCR, 0)
		r.outb(uartMCR, s1)
		if (s1^s2)&mcrLoop != 0 {
			return "NS16550A"
		}
	}
	// TI16750: IIR bit 5 follows the 64-byte FIFO bit only with DLAB.
	r.outb(uartLCR, 0)
	r.outb(uartIIR, fcrEnable|0x20)
	t1 := r.in(uartIIR) >> 5
	r.outb(uartIIR, fcrEnable)
	r.outb(uartLCR, 0x80)
	r.outb(uartIIR, fcrEnable|0x20)
	t2 := r.in(uartIIR) >> 5
	r.outb(uartIIR, fcrEnable)
	r.outb(uartLCR, 0)
	if t1 == 6 && t2 == 7 {
		return "TI16750"
	}
	// XScale: IER bit 6 (UUE) must not stick.
	ier := r.in(uartIER)
	r.outb(uartIER, ier&^0x40)
	if r.in(uartIER)&0x40 == 0 {
		r.outb(uartIER, ier|0x40)
		if r.in(uartIER)&0x40 != 0 {
			return "XScale"
		}
	}
	r.outb(uartIER, ier)
	if n := sizeFIFO(r); n != 16 {
		return "16550A with a FIFO of the wrong size"
	}
	return "16550A"
}

// sizeFIFO counts the receive FIFO the way Linux's size_fifo() does:
// loopback, fast divisor, transmit 256 bytes, count what can be read.
func sizeFIFO(r *uartRig) int {
	oldLCR := r.in(uartLCR)
	r.outb(uartLCR, 0)
	oldFCR := r.in(uartIIR)
	oldMCR := r.in(uartMCR)
	r.outb(uartIIR, fcrEnable|fcrClearRX|fcrClearTX)
	r.outb(uartMCR, mcrLoop)
	r.outb(uartLCR, 0x80)
	r.outb(uartRBR, 1)
	r.outb(uartIER, 0)
	r.outb(uartLCR, 0x03)
	for i := 0; i < 256; i++ {
		r.outb(uartRBR, uint8(i))
	}
	n := 0
	for ; r.in(uartLSR)&lsrDR != 0 && n < 256; n++ {
		r.in(uartRBR)
	}
	r.outb(uartIIR, oldFCR)
	r.outb(uartMCR, oldMCR)
	r.outb(uartLCR, oldLCR)
	return n
}

func TestUARTLinuxAutoconfigSees16550A(t *testing.T) {
	r := newUARTRig(t)
	if got := linuxAutoconfig(r); got != "16550A" {
		t.Fatalf("Linux autoconfig detects %q, want 16550A", got)
	}
	if r.out.Len() != 0 {
		t.Fatalf("loopback probe leaked % x to the output", r.out.Bytes())
	}
	// Autoconfig again from a dirty state (the guest rebooted mid-use).
	r.outb(uartMCR, mcrOUT2|mcrRTS|mcrDTR)
	r.outb(uartIER, 0x0f)
	r.u.Receive([]byte("xyz"))
	if got := linuxAutoconfig(r); got != "16550A" {
		t.Fatalf("second autoconfig detects %q, want 16550A", got)
	}
}

func TestUARTResetState(t *testing.T) {
	r := newUARTRig(t)
	for _, c := range []struct {
		off  uint16
		want uint8
	}{{uartIER, 0}, {uartIIR, 0x01}, {uartLCR, 0}, {uartMCR, 0}, {uartLSR, 0x60}, {uartMSR, 0xb0}} {
		if got := r.in(c.off); got != c.want {
			t.Errorf("register %d after reset = %#02x, want %#02x", c.off, got, c.want)
		}
	}
	if len(r.irq.edges) != 0 {
		t.Errorf("reset drove the IRQ line: %v", r.irq.edges)
	}
}

func TestUARTDivisorLatch(t *testing.T) {
	r := newUARTRig(t)
	r.outb(uartIER, 0x05)
	r.outb(uartLCR, 0x83) // DLAB, 8N1
	r.outb(uartRBR, 0x0c)
	r.outb(uartIER, 0x00)
	if got := r.u.Divisor(); got != 12 {
		t.Fatalf("divisor = %d, want 12 (9600 baud)", got)
	}
	if r.in(uartRBR) != 0x0c || r.in(uartIER) != 0 {
		t.Fatal("divisor latch does not read back")
	}
	if r.out.Len() != 0 {
		t.Fatal("DLL write transmitted a byte")
	}
	r.outb(uartLCR, 0x03)
	if got := r.in(uartIER); got != 0x05 {
		t.Fatalf("IER after clearing DLAB = %#x, want 0x05 (untouched by DLM writes)", got)
	}
	if got := r.in(uartLCR); got != 0x03 {
		t.Fatalf("LCR = %#x", got)
	}
	r.outb(uartSCR, 0x5a)
	if r.in(uartSCR) != 0x5a {
		t.Fatal("scratch register lost its value")
	}
}

func TestUARTTHREInterrupt(t *testing.T) {
	r := newUARTRig(t)
	r.outb(uartMCR, mcrOUT2|mcrDTR|mcrRTS)
	r.outb(uartIER, ierETBEI)
	r.wantLine(true)
	r.wantIIR(0x02) // THRE, FIFOs off
	r.wantLine(false)
	r.wantIIR(0x01) // acknowledged by the IIR read

	// Writing THR acknowledges and, the byte gone at once, THR is empty
	// again: the line drops and rises, a fresh edge for an edge PIC.
	r.irq.edges = nil
	r.outb(uartRBR, 'A')
	if want := []lineEdge{{COM1IRQ, true}}; !equalEdges(r.irq.edges, want) {
		t.Fatalf("edges after THR write from idle = %v, want %v", r.irq.edges, want)
	}
	r.irq.edges = nil
	r.outb(uartRBR, 'B')
	if want := []lineEdge{{COM1IRQ, false}, {COM1IRQ, true}}; !equalEdges(r.irq.edges, want) {
		t.Fatalf("edges after THR write with THRE pending = %v, want %v", r.irq.edges, want)
	}
	r.outb(uartIER, 0)
	r.wantLine(false)
	r.wantIIR(0x01)

	// Linux's serial8250_do_startup THRE re-assertion test: enabling THRI
	// with THR empty must raise THRE each time.
	r.outb(uartIER, ierETBEI)
	iir1 := r.in(uartIIR)
	r.outb(uartIER, 0)
	r.outb(uartIER, ierETBEI)
	iir2 := r.in(uartIIR)
	r.outb(uartIER, 0)
	if iir1&iirNoInt != 0 || iir2&iirNoInt != 0 {
		t.Fatalf("THRE not reasserted on enabling THRI: iir1=%#x iir2=%#x (Linux would set UART_BUG_THRE)", iir1, iir2)
	}
	if r.in(uartLSR)&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
		t.Fatal("LSR does not report THR and transmitter empty")
	}
	if r.out.String() != "AB" {
		t.Fatalf("output %q, want AB", r.out.String())
	}
}

func equalEdges(a, b []lineEdge) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestUARTOutputByteExact(t *testing.T) {
	r := newUARTRig(t)
	msg := []byte("Linux version 6.1.0 (ftvm)\r\n\x00\x1b[0m\xff\x80")
	r.outb(uartLCR, 0x03)
	for _, b := range msg {
		for r.in(uartLSR)&lsrTHRE == 0 {
		}
		r.outb(uartRBR, b)
	}
	if !bytes.Equal(r.out.Bytes(), msg) {
		t.Fatalf("output % x, want % x", r.out.Bytes(), msg)
	}
	// A 2-byte OUT is two byte accesses: THR then IER.
	r.u.WritePort(COM1Port, []byte{'!', 0x01})
	if r.out.String() != string(msg)+"!" || r.in(uartIER) != 0x01 {
		t.Fatal("wide write not split into byte accesses")
	}
}

func TestUARTRXTriggerLevels(t *testing.T) {
	for _, c := range []struct {
		fcr     uint8
		trigger int
	}{{0x01, 1}, {0x41, 4}, {0x81, 8}, {0xc1, 14}} {
		r := newUARTRig(t)
		r.outb(uartIIR, c.fcr)
		r.outb(uartMCR, mcrOUT2)
		r.outb(uartIER, ierERBFI)
		r.wantLine(false)
		r.wantIIR(0xc1)
		for n := 1; n <= UARTFIFOSize; n++ {
			if r.u.Receive([]byte{byte(n)}) != 1 {
				t.Fatalf("trigger %d: byte %d refused", c.trigger, n)
			}
			want := uint8(0xcc) // timeout: data below the trigger
			if n >= c.trigger {
				want = 0xc4
			}
			r.wantIIR(want)
			r.wantLine(true)
		}
		if n := r.u.Receive([]byte{1, 2}); n != 0 {
			t.Fatalf("full FIFO took %d bytes", n)
		}
		for n := UARTFIFOSize; n > 0; n-- {
			if r.in(uartLSR)&lsrDR == 0 {
				t.Fatalf("LSR.DR clear with %d bytes queued", n)
			}
			if got := r.in(uartRBR); got != byte(UARTFIFOSize-n+1) {
				t.Fatalf("RBR = %d, want %d", got, UARTFIFOSize-n+1)
			}
		}
		r.wantIIR(0xc1)
		r.wantLine(false)
		if r.in(uartLSR) != 0x60 {
			t.Fatal("LSR not idle after draining")
		}
	}
}

func TestUARTReceiveTakesWhatFits(t *testing.T) {
	r := newUARTRig(t)
	// FIFOs off: only the receiver buffer register.
	if n := r.u.Receive([]byte("abc")); n != 1 {
		t.Fatalf("16450 mode took %d bytes, want 1", n)
	}
	if r.in(uartRBR) != 'a' || r.in(uartLSR)&lsrOE != 0 {
		t.Fatal("16450 mode lost or corrupted the byte")
	}
	r.outb(uartIIR, fcrEnable)
	if n := r.u.Receive(make([]byte, 40)); n != UARTFIFOSize {
		t.Fatalf("FIFO took %d bytes, want %d", n, UARTFIFOSize)
	}
	if r.u.RXFree() != 0 {
		t.Fatal("RXFree not 0 when full")
	}
	r.outb(uartIIR, fcrEnable|fcrClearRX)
	if r.u.RXFree() != UARTFIFOSize || r.in(uartLSR)&lsrDR != 0 {
		t.Fatal("FCR receiver reset did not empty the FIFO")
	}
	r.u.Receive([]byte("q"))
	r.outb(uartIIR, 0) // disabling the FIFOs empties them
	if r.in(uartLSR)&lsrDR != 0 {
		t.Fatal("clearing FCR0 kept received data")
	}
	r.outb(uartMCR, mcrLoop)
	if n := r.u.Receive([]byte("x")); n != 0 || r.u.RXFree() != 0 {
		t.Fatal("loopback mode accepted external input")
	}
}

func TestUARTOverrun(t *testing.T) {
	r := newUARTRig(t)
	r.outb(uartIIR, 0xc1)
	r.outb(uartMCR, mcrLoop)
	r.outb(uartIER, ierELSI|ierERBFI)
	for i := 0; i < UARTFIFOSize+3; i++ {
		r.outb(uartRBR, byte('a'+i))
	}
	r.wantIIR(0xc6) // line status outranks data available
	lsr := r.in(uartLSR)
	if lsr&(lsrOE|lsrDR) != lsrOE|lsrDR {
		t.Fatalf("LSR = %#x, want OE and DR", lsr)
	}
	if r.in(uartLSR)&lsrOE != 0 {
		t.Fatal("reading LSR did not clear OE")
	}
	r.wantIIR(0xc4)
	for i := 0; i < UARTFIFOSize; i++ {
		if got := r.in(uartRBR); got != byte('a'+i) {
			t.Fatalf("FIFO byte %d = %q, want %q (overrun must not disturb the FIFO)", i, got, byte('a'+i))
		}
	}
	if r.in(uartLSR)&lsrDR != 0 {
		t.Fatal("bytes beyond the FIFO were kept")
	}
	if r.out.Len() != 0 {
		t.Fatal("loopback transmitted to the output")
	}
	// Loopback keeps the line quiet even with OUT2: on a PC the chip's
	// OUT2 pin is forced inactive, which disconnects the interrupt.
	r.outb(uartMCR, mcrLoop|mcrOUT2)
	r.outb(uartRBR, 'z')
	if r.in(uartIIR)&iirNoInt != 0 {
		t.Fatal("no interrupt pending in loopback")
	}
	r.wantLine(false)

	// 16450 mode: the newer character replaces the unread one.
	r = newUARTRig(t)
	r.outb(uartMCR, mcrLoop)
	r.outb(uartRBR, '1')
	r.outb(uartRBR, '2')
	if r.in(uartLSR)&lsrOE == 0 || r.in(uartRBR) != '2' {
		t.Fatal("16450-mode overrun: want OE and the newer byte")
	}
}

func TestUARTOUT2GatesIRQ(t *testing.T) {
	r := newUARTRig(t)
	r.outb(uartIER, ierERBFI)
	r.u.Receive([]byte("k"))
	r.wantIIR(0x04)
	r.wantLine(false)
	r.outb(uartMCR, mcrOUT2)
	r.wantLine(true)
	r.outb(uartMCR, mcrDTR|mcrRTS)
	r.wantLine(false)
	r.outb(uartMCR, mcrOUT2)
	r.wantLine(true)
	r.in(uartRBR)
	r.wantLine(false)
}

func TestUARTModemStatus(t *testing.T) {
	r := newUARTRig(t)
	r.outb(uartMCR, mcrOUT2)
	r.outb(uartIER, ierEDSSI)
	r.wantLine(false)
	// Entering loopback with all outputs low drops CTS, DSR and DCD.
	r.outb(uartMCR, mcrLoop)
	if got := r.in(uartIIR); got != 0x00 {
		t.Fatalf("IIR = %#x, want modem status (0x00)", got)
	}
	if got := r.in(uartMSR); got != msrDCTS|msrDDSR|msrDDCD {
		t.Fatalf("MSR = %#x, want deltas only", got)
	}
	if got := r.in(uartMSR); got != 0 {
		t.Fatalf("MSR deltas survived a read: %#x", got)
	}
	r.outb(uartMCR, mcrLoop|mcrDTR|mcrRTS|mcrOUT1|mcrOUT2)
	if got := r.in(uartMSR); got != 0xf0|msrDCTS|msrDDSR|msrDDCD {
		t.Fatalf("MSR = %#x, want all lines plus deltas (no TERI on RI rising)", got)
	}
	r.outb(uartMCR, mcrLoop|mcrDTR|mcrRTS|mcrOUT2)
	if got := r.in(uartMSR); got != 0xb0|msrTERI {
		t.Fatalf("MSR = %#x, want TERI on RI's trailing edge", got)
	}
}

func TestUARTPriority(t *testing.T) {
	r := newUARTRig(t)
	r.outb(uartIIR, fcrEnable)
	r.outb(uartMCR, mcrOUT2|mcrLoop)
	r.outb(uartIER, 0x0f)
	r.in(uartMSR)
	r.wantIIR(0xc2)          // THRE (reading acknowledges it)
	r.outb(uartMCR, mcrOUT2) // leave loopback: modem lines change
	r.wantIIR(0xc0)
	r.u.Receive([]byte("a"))
	r.outb(uartIER, 0x0d)
	r.outb(uartIER, 0x0f) // THRE again
	r.wantIIR(0xc4)       // data outranks THRE and modem status
	r.in(uartRBR)
	r.wantIIR(0xc2)
	r.wantIIR(0xc0)
	r.in(uartMSR)
	r.wantIIR(0xc1)
	r.wantLine(false)
}

// FuzzUART drives the UART with arbitrary register accesses and input and
// checks the FIFO bounds and that the IRQ line follows the model.
func FuzzUART(f *testing.F) {
	f.Add([]byte{0x24, 0x08, 0x21, 0x0f, 0x02, 0xc1, 0x50, 0x80, 0x40, 'h', 0x45, 0x22})
	f.Add([]byte{0x24, 0x1b, 0x02, 0x01, 0x00, 0x41, 0x00, 0x42, 0x45, 0x45, 0x60, 0x60})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newUARTRig(t)
		for i := 0; i+1 < len(ops); i += 2 {
			op, v := ops[i], ops[i+1]
			reg := uint16(op & 7)
			switch op >> 3 & 3 {
			case 0:
				r.in(reg)
			case 1:
				r.outb(reg, v)
			case 2:
				n := int(v & 31)
				buf := bytes.Repeat([]byte{v}, n)
				free := r.u.RXFree()
				got := r.u.Receive(buf)
				if want := min(free, n); got != want {
					t.Fatalf("Receive(%d bytes) = %d with %d free", n, got, free)
				}
			case 3:
				r.u.Reset()
			}
			if r.u.rxLen < 0 || r.u.rxLen > r.u.rxCap() || r.u.rxHead < 0 || r.u.rxHead >= UARTFIFOSize {
				t.Fatalf("FIFO out of bounds: len %d head %d cap %d", r.u.rxLen, r.u.rxHead, r.u.rxCap())
			}
			want := r.u.pendingID() != iirNoInt && r.u.mcr&mcrOUT2 != 0 && r.u.mcr&mcrLoop == 0
			if r.line() != want {
				t.Fatalf("IRQ line %v, model says %v", r.line(), want)
			}
			for j := 1; j < len(r.irq.edges); j++ {
				if r.irq.edges[j].high == r.irq.edges[j-1].high {
					t.Fatal("line driven to the level it already had")
				}
			}
		}
	})
}

type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	w.n++
	return 0, errWriter
}

var errWriter = &writerError{}

type writerError struct{}

func (*writerError) Error() string { return "console gone" }

func TestUARTWriterErrorsInvisibleToGuest(t *testing.T) {
	w := &failingWriter{}
	u := NewUART(COM1Port, nil, COM1IRQ, w)
	u.WritePort(COM1Port, []byte{'a'})
	u.WritePort(COM1Port, []byte{'b'})
	var b [2]byte
	u.ReadPort(COM1Port+5, b[:1])
	if b[0] != 0x60 {
		t.Fatalf("LSR = %#x after writer errors, want 0x60", b[0])
	}
	if n, err := u.OutputErrors(); n != 2 || err != errWriter || w.n != 2 {
		t.Fatalf("OutputErrors = %d, %v", n, err)
	}
	u.ReadPort(COM1Port+7, b[:]) // runs off the end of the UART
	if b[1] != 0xff {
		t.Fatalf("read past the UART = %#x, want 0xff", b[1])
	}
}

func TestUARTReset(t *testing.T) {
	r := newUARTRig(t)
	r.outb(uartIIR, fcrEnable)
	r.outb(uartMCR, mcrOUT2)
	r.outb(uartIER, 0x0f)
	r.u.Receive([]byte("abc"))
	r.wantLine(true)
	r.outb(uartSCR, 0x11)
	r.u.Reset()
	r.wantLine(false)
	if r.in(uartLSR) != 0x60 || r.in(uartIIR) != 0x01 || r.in(uartSCR) != 0x11 {
		t.Fatal("Reset did not restore the master-reset state")
	}
}
