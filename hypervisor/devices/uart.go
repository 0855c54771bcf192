package devices

import "io"

// Register offsets from the UART's base port.
const (
	uartRBR = 0 // read: receive buffer; write: THR; DLL when LCR.DLAB
	uartIER = 1 // DLM when LCR.DLAB
	uartIIR = 2 // read: IIR (whatever DLAB says); write: FCR
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7
)

// Register bits, named after the 16550A datasheet.
const (
	ierERBFI = 0x01 // received data available (and character timeout)
	ierETBEI = 0x02 // transmitter holding register empty
	ierELSI  = 0x04 // receiver line status
	ierEDSSI = 0x08 // modem status

	iirNoInt   = 0x01
	iirMSI     = 0x00
	iirTHRI    = 0x02
	iirRDI     = 0x04
	iirRLSI    = 0x06
	iirTimeout = 0x0c
	iirFIFO    = 0xc0 // both bits set: "16550A, FIFOs enabled"

	fcrEnable  = 0x01
	fcrClearRX = 0x02
	fcrClearTX = 0x04
	fcrDMA     = 0x08
	fcrTrigger = 0xc0

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrOE   = 0x02
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrDCTS = 0x01
	msrDDSR = 0x02
	msrTERI = 0x04
	msrDDCD = 0x08
	msrCTS  = 0x10
	msrDSR  = 0x20
	msrRI   = 0x40
	msrDCD  = 0x80
)

// UARTFIFOSize is the depth of the 16550A's receive FIFO.
const UARTFIFOSize = 16

// uartConnected is what the modem-status inputs read outside loopback: a
// terminal that is present and ready (CTS, DSR, DCD), never ringing.
const uartConnected = msrCTS | msrDSR | msrDCD

// UART models an NS16550A serial port wired PC-style: its interrupt output
// reaches the IRQ line only while MCR.OUT2 is set.
//
// Transmission is instantaneous: a byte written to THR goes straight to the
// output writer, so THR and the transmitter are always empty (LSR.THRE and
// LSR.TEMT always read 1) and the baud rate (divisor latch) is stored but
// has no effect. Received bytes enter through Receive, which the exit loop
// calls at an exit; Receive takes only what fits in the FIFO, leaving the
// rest with the caller, so nothing is lost to overrun from the host side.
// Overrun (LSR.OE) still happens where real hardware would produce it
// without the host's help: the guest transmitting into a full receive FIFO
// in loopback mode.
//
// The character-timeout interrupt, which real hardware raises after four
// idle character times, is approximated without a clock: it is reported
// whenever the FIFO holds fewer bytes than the trigger level but is not
// empty. Linux handles it exactly like "data available" (drain while
// LSR.DR), so the guest sees its data promptly and deterministically.
//
// Only byte accesses are meaningful; a wider access is treated as
// consecutive byte accesses, as an 8-bit ISA device sees it.
type UART struct {
	base uint16
	irq  IRQSink
	line uint8
	out  io.Writer

	ier, lcr, mcr, scr uint8
	fcr                uint8 // enable, DMA mode and trigger bits as written
	dll, dlm           uint8
	lsrErr             uint8 // OE until LSR is read
	msrDelta           uint8 // delta bits until MSR is read
	thrPending         bool  // THR-empty interrupt not yet acknowledged

	rx     [UARTFIFOSize]byte
	rxHead int
	rxLen  int
	lastRX byte // RBR reads this when the FIFO is empty, like the stale latch

	irqHigh bool // what we last drove on the line
	txByte  [1]byte
	outErrs uint64
	outErr  error
}

// NewUART returns a 16550A at ports [base, base+8) driving IRQ line on irq
// (nil: no interrupt wiring), in its power-on state, writing transmitted
// bytes to out. out should not block for long: it runs on the exit loop.
func NewUART(base uint16, irq IRQSink, line uint8, out io.Writer) *UART {
	u := &UART{base: base, irq: irq, line: line, out: out}
	u.Reset()
	return u
}

// Ports returns the range the UART decodes.
func (u *UART) Ports() []PortRange { return []PortRange{{Base: u.base, Size: 8}} }

// Reset puts the UART in its master-reset state (datasheet MR pin): all
// registers but the divisor latch and scratch cleared, FIFO emptied.
func (u *UART) Reset() {
	u.ier, u.lcr, u.mcr, u.fcr = 0, 0, 0, 0
	u.lsrErr, u.msrDelta = 0, 0
	u.thrPending = false
	u.rxHead, u.rxLen = 0, 0
	u.updateIRQ()
}

// Divisor returns the divisor latch, for diagnostics.
func (u *UART) Divisor() uint16 { return uint16(u.dlm)<<8 | uint16(u.dll) }

// OutputErrors reports how many transmitted bytes the writer refused, and
// the last error. The guest never sees these: transmission cannot fail on
// the wire, and a backup's writer differs from the primary's.
func (u *UART) OutputErrors() (n uint64, last error) { return u.outErrs, u.outErr }

// Receive offers bytes from the outside world to the receiver and returns
// how many it took (FIFO space; none in loopback mode, where the serial
// input is disconnected). Call it only from the exit loop at an exit.
func (u *UART) Receive(b []byte) int {
	if u.mcr&mcrLoop != 0 {
		return 0
	}
	n := 0
	for n < len(b) && u.rxLen < u.rxCap() {
		u.pushRX(b[n])
		n++
	}
	if n > 0 {
		u.updateIRQ()
	}
	return n
}

// RXFree returns how many bytes Receive would take now.
func (u *UART) RXFree() int {
	if u.mcr&mcrLoop != 0 {
		return 0
	}
	return u.rxCap() - u.rxLen
}

// ReadPort implements PortDevice.
func (u *UART) ReadPort(port uint16, data []byte) {
	for i := range data {
		off := uint32(port) + uint32(i) - uint32(u.base)
		if off >= 8 {
			data[i] = 0xff
			continue
		}
		data[i] = u.readReg(uint8(off))
	}
}

// WritePort implements PortDevice.
func (u *UART) WritePort(port uint16, data []byte) {
	for i, v := range data {
		off := uint32(port) + uint32(i) - uint32(u.base)
		if off < 8 {
			u.writeReg(uint8(off), v)
		}
	}
}

func (u *UART) readReg(off uint8) uint8 {
	switch off {
	case uartRBR:
		if u.lcr&lcrDLAB != 0 {
			return u.dll
		}
		return u.popRX()
	case uartIER:
		if u.lcr&lcrDLAB != 0 {
			return u.dlm
		}
		return u.ier
	case uartIIR:
		id := u.pendingID()
		if id == iirTHRI {
			// Reading IIR acknowledges THRE only when it is the
			// interrupt being reported (datasheet, table 4).
			u.thrPending = false
			u.updateIRQ()
		}
		if u.fcr&fcrEnable != 0 {
			id |= iirFIFO
		}
		return id
	case uartLCR:
		return u.lcr
	case uartMCR:
		return u.mcr
	case uartLSR:
		v := u.lsrErr | lsrTHRE | lsrTEMT
		if u.rxLen > 0 {
			v |= lsrDR
		}
		if u.lsrErr != 0 {
			u.lsrErr = 0
			u.updateIRQ()
		}
		return v
	case uartMSR:
		v := u.modemInputs() | u.msrDelta
		if u.msrDelta != 0 {
			u.msrDelta = 0
			u.updateIRQ()
		}
		return v
	default: // uartSCR
		return u.scr
	}
}

func (u *UART) writeReg(off uint8, v uint8) {
	switch off {
	case uartRBR:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			return
		}
		u.transmit(v)
	case uartIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			return
		}
		v &= 0x0f
		// Enabling ETBEI while THR is empty raises THRE at once; Linux's
		// 8250 startup probes for exactly this (UART_BUG_THRE/TXEN), and
		// THR is always empty here.
		if v&ierETBEI != 0 && u.ier&ierETBEI == 0 {
			u.thrPending = true
		} else if v&ierETBEI == 0 {
			u.thrPending = false
		}
		u.ier = v
		u.updateIRQ()
	case uartIIR:
		u.writeFCR(v)
	case uartLCR:
		u.lcr = v
	case uartMCR:
		u.writeMCR(v & 0x1f)
	case uartLSR, uartMSR:
		// Factory-test writes on real parts; ignored.
	default:
		u.scr = v
	}
}

func (u *UART) transmit(v uint8) {
	// Writing THR acknowledges THRE; the line drops here so that an
	// edge-triggered PIC sees a fresh edge when THR empties again, as it
	// would after the byte's transmission time on real hardware.
	u.thrPending = false
	u.updateIRQ()
	if u.mcr&mcrLoop != 0 {
		u.pushRX(v)
	} else {
		u.txByte[0] = v
		if _, err := u.out.Write(u.txByte[:]); err != nil {
			u.outErrs++
			u.outErr = err
		}
	}
	u.thrPending = true
	u.updateIRQ()
}

func (u *UART) writeFCR(v uint8) {
	if v&fcrEnable == 0 {
		// Bits other than FCR0 are only programmed while FCR0 is 1, and
		// changing FCR0 empties both FIFOs.
		if u.fcr&fcrEnable != 0 {
			u.rxHead, u.rxLen = 0, 0
		}
		u.fcr = 0
		u.updateIRQ()
		return
	}
	if u.fcr&fcrEnable == 0 || v&fcrClearRX != 0 {
		u.rxHead, u.rxLen = 0, 0
	}
	// fcrClearTX has nothing to clear: the transmit side is always empty.
	u.fcr = v & (fcrEnable | fcrDMA | fcrTrigger)
	u.updateIRQ()
}

func (u *UART) writeMCR(v uint8) {
	before := u.modemInputs()
	u.mcr = v
	after := u.modemInputs()
	// In loopback the modem inputs follow MCR, so their changes show up
	// as delta bits exactly as external line changes would.
	changed := before ^ after
	if changed&msrCTS != 0 {
		u.msrDelta |= msrDCTS
	}
	if changed&msrDSR != 0 {
		u.msrDelta |= msrDDSR
	}
	if changed&msrDCD != 0 {
		u.msrDelta |= msrDDCD
	}
	if before&msrRI != 0 && after&msrRI == 0 {
		u.msrDelta |= msrTERI // trailing edge only
	}
	u.updateIRQ()
}

// modemInputs is the status half of MSR: the external lines, or in loopback
// the MCR outputs wired back (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD).
func (u *UART) modemInputs() uint8 {
	if u.mcr&mcrLoop == 0 {
		return uartConnected
	}
	var v uint8
	if u.mcr&mcrRTS != 0 {
		v |= msrCTS
	}
	if u.mcr&mcrDTR != 0 {
		v |= msrDSR
	}
	if u.mcr&mcrOUT1 != 0 {
		v |= msrRI
	}
	if u.mcr&mcrOUT2 != 0 {
		v |= msrDCD
	}
	return v
}

func (u *UART) rxCap() int {
	if u.fcr&fcrEnable != 0 {
		return UARTFIFOSize
	}
	return 1 // 16450 mode: just the receiver buffer register
}

func (u *UART) rxTrigger() int {
	switch u.fcr >> 6 {
	case 0:
		return 1
	case 1:
		return 4
	case 2:
		return 8
	default:
		return 14
	}
}

// pushRX takes a byte from the receiver's shift register. Callers update
// the IRQ line.
func (u *UART) pushRX(v uint8) {
	if u.rxLen < u.rxCap() {
		u.rx[(u.rxHead+u.rxLen)%UARTFIFOSize] = v
		u.rxLen++
		return
	}
	u.lsrErr |= lsrOE
	if u.fcr&fcrEnable == 0 {
		// 16450 mode: the new character overwrites the unread one. In
		// FIFO mode it dies in the shift register instead.
		u.rx[u.rxHead] = v
	}
}

func (u *UART) popRX() uint8 {
	if u.rxLen == 0 {
		return u.lastRX
	}
	v := u.rx[u.rxHead]
	u.rxHead = (u.rxHead + 1) % UARTFIFOSize
	u.rxLen--
	u.lastRX = v
	u.updateIRQ()
	return v
}

// pendingID is the IIR identification of the highest-priority enabled
// interrupt: line status > received data (or timeout) > THR empty > modem
// status, or iirNoInt.
func (u *UART) pendingID() uint8 {
	switch {
	case u.ier&ierELSI != 0 && u.lsrErr != 0:
		return iirRLSI
	case u.ier&ierERBFI != 0 && u.rxLen > 0:
		if u.fcr&fcrEnable != 0 && u.rxLen < u.rxTrigger() {
			return iirTimeout
		}
		return iirRDI
	case u.ier&ierETBEI != 0 && u.thrPending:
		return iirTHRI
	case u.ier&ierEDSSI != 0 && u.msrDelta != 0:
		return iirMSI
	}
	return iirNoInt
}

// updateIRQ drives the line to match the interrupt output gated by OUT2.
// In loopback the chip forces OUT2 inactive, which on a PC disconnects the
// interrupt from the bus too.
func (u *UART) updateIRQ() {
	high := u.pendingID() != iirNoInt && u.mcr&(mcrOUT2|mcrLoop) == mcrOUT2
	if high != u.irqHigh {
		u.irqHigh = high
		if u.irq != nil {
			u.irq.SetIRQ(u.line, high)
		}
	}
}
