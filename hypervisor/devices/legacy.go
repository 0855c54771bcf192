package devices

// Legacy ports beyond the ones in devices.go.
const (
	I8042StatusPort uint16 = 0x64 // status (read) and command (write)
	Port92          uint16 = 0x92 // System Control Port A: fast A20 and fast reset
)

const (
	i8042StatusOBF = 0x01 // output buffer full: data waiting at 0x60
	i8042StatusIBF = 0x02 // input buffer full: controller busy

	i8042CmdWriteOutput = 0xd1 // next byte on 0x60 is the output port
	i8042OutReset       = 0x01 // output port bit 0: CPU reset line, active low

	port92Reset = 0x01
	port92A20   = 0x02

	cf9Reset     = 0x04 // RST_CPU
	cf9Writable  = 0x0a // SYS_RST and FULL_RST: kept, no effect of their own
	i8042Invalid = 0xff
)

// Legacy models the small PC ports Linux touches at boot and reboot:
//
//   - 0x80, the POST/debug port Linux writes as an I/O delay: writes are
//     dropped, reads float to 0xff.
//   - 0x60/0x64, the i8042 keyboard controller, reduced to its reset line.
//     Command 0xFE (and any pulse-output command 0xF0-0xFF that pulses
//     bit 0), or command 0xD1 followed by an output-port byte with bit 0
//     clear, requests a reset. Other commands are accepted and ignored.
//   - 0x92, System Control Port A: bit 0 requests a reset; A20 always
//     reads enabled, since ftvm's guests run with it enabled and KVM has no
//     A20 gate.
//   - 0xCF9, the chipset reset control register: a write with RST_CPU
//     (bit 2) set requests a reset.
//
// The i8042 status register reads "output buffer full, input buffer
// empty" and the data port reads 0xff, a controller whose output never
// drains. That is deliberate: Linux's i8042_controller_check() flushes the
// output buffer for at most 16 bytes and then reports "i8042: No
// controller found" and gives up at once (about 1 ms), whereas a status
// of "no data" would let the probe go on to read the controller's command
// byte and wait 0.5 s for an answer no keyboard will give before failing
// with an error. The reboot path (kb_wait before writing 0xFE, for
// reboot=k) only waits for the input buffer, which is always empty.
type Legacy struct {
	power PowerControl

	port92, cf9 uint8
	i8042Cmd    uint8 // command waiting for its data byte, or 0
}

// NewLegacy returns the legacy ports, sending reset requests to power.
func NewLegacy(power PowerControl) *Legacy {
	return &Legacy{power: power}
}

// Ports returns the single-port ranges Legacy decodes. Port 0x61, between
// the i8042's two ports, belongs to the PIT.
func (l *Legacy) Ports() []PortRange {
	return []PortRange{
		{Base: I8042Port, Size: 1},
		{Base: I8042StatusPort, Size: 1},
		{Base: DebugPort, Size: 1},
		{Base: Port92, Size: 1},
		{Base: ResetPort, Size: 1},
	}
}

// Reset returns the ports to their power-on state.
func (l *Legacy) Reset() {
	l.port92, l.cf9, l.i8042Cmd = 0, 0, 0
}

// ReadPort implements PortDevice.
func (l *Legacy) ReadPort(port uint16, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if len(data) == 0 {
		return
	}
	switch port {
	case I8042StatusPort:
		data[0] = i8042StatusOBF
	case I8042Port:
		data[0] = i8042Invalid
	case Port92:
		data[0] = l.port92 | port92A20
	case ResetPort:
		data[0] = l.cf9
	}
}

// WritePort implements PortDevice.
func (l *Legacy) WritePort(port uint16, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	switch port {
	case I8042StatusPort:
		l.i8042Cmd = 0
		switch {
		case v == i8042CmdWriteOutput:
			l.i8042Cmd = v
		case v >= 0xf0 && v&i8042OutReset == 0:
			// Pulse-output commands pulse the output lines whose bit
			// is clear; bit 0 is the reset line.
			l.reset()
		}
	case I8042Port:
		if l.i8042Cmd == i8042CmdWriteOutput && v&i8042OutReset == 0 {
			l.reset()
		}
		l.i8042Cmd = 0
	case Port92:
		l.port92 = v &^ (port92Reset | port92A20)
		if v&port92Reset != 0 {
			l.reset()
		}
	case ResetPort:
		l.cf9 = v & cf9Writable
		if v&cf9Reset != 0 {
			l.reset()
		}
	}
	// DebugPort: dropped.
}

func (l *Legacy) reset() {
	if l.power != nil {
		l.power.RequestReset()
	}
}
