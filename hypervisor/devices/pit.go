package devices

import (
	"math"
	"math/bits"
	"time"
)

// pitTick converts guest time to the number of whole PIT input clocks
// since power-on. The absolute grid (rather than time since each count
// write) keeps periodic interrupts free of rounding drift, and the 128-bit
// intermediate keeps it exact for any uptime.
func pitTick(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(d), PITHz)
	q, _ := bits.Div64(hi, lo, uint64(time.Second))
	return int64(q)
}

// pitTime is the earliest guest time at which pitTick reaches tick.
func pitTime(tick int64) time.Duration {
	if tick <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(tick), uint64(time.Second))
	lo, carry := bits.Add64(lo, PITHz-1, 0)
	hi += carry
	if hi >= PITHz {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, PITHz)
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(q)
}

type pitState uint8

const (
	// pitIdle: a control word was written and no count yet (or, in
	// mode 0, only the first byte of one). The counter does not count.
	pitIdle pitState = iota
	// pitArmed: modes 1 and 5 hold a count and wait for a gate trigger.
	pitArmed
	// pitRunning: the counting element is loaded and counting.
	pitRunning
	// pitPaused: the gate is low. Modes 0 and 4 hold their count and
	// resume; modes 2 and 3 restart from the count register on the
	// gate's rising edge.
	pitPaused
)

// pitChannel is one 8254 counter. Instead of decrementing on every input
// clock it records when its counting element was loaded and derives count
// and OUT for any later tick, so time only enters through the accesses
// that observe it.
type pitChannel struct {
	access   uint8 // RW1-RW0: 1 LSB only, 2 MSB only, 3 LSB then MSB
	modeBits uint8 // M2-M0 exactly as written, for the status byte
	mode     uint8 // 0-5, with 6 and 7 folded onto 2 and 3
	bcd      bool

	cr       uint16 // count register: the last complete count written
	lsb      uint8  // first byte of a two-byte count in progress
	writeMSB bool
	readMSB  bool // read flip-flop for unlatched two-byte reads

	latched       bool
	latchValue    uint16
	latchMSB      bool
	statusLatched bool
	status        uint8

	gate  bool
	state pitState

	// While running, the counting element was loaded with n at tick
	// start. One-shot modes count n-(t-start) and keep wrapping past
	// zero; modes 2 and 3 repeat with period n.
	start, n int64
	// A count written during a mode 2/3 cycle takes effect when the
	// current cycle ends (tick nextStart), per the datasheet.
	nextValid bool
	nextStart int64
	nextN     int64
	// held is what a paused counter froze: remaining ticks in modes 0
	// and 4, the count value in modes 2 and 3.
	held int64
}

func (c *pitChannel) modulus() int64 {
	if c.bcd {
		return 10000
	}
	return 65536
}

// reload is the count register as a number of input clocks; an initial
// count of 0 is the largest one (2^16 binary, 10^4 BCD).
func (c *pitChannel) reload() int64 {
	v := int64(c.cr)
	if c.bcd {
		v = int64(c.cr>>12&0xf)*1000 + int64(c.cr>>8&0xf)*100 + int64(c.cr>>4&0xf)*10 + int64(c.cr&0xf)
	}
	if v == 0 {
		return c.modulus()
	}
	return v
}

// encode turns a counter value into the 16 bits the guest reads.
func (c *pitChannel) encode(v int64) uint16 {
	m := c.modulus()
	v = (v%m + m) % m
	if !c.bcd {
		return uint16(v)
	}
	return uint16(v/1000)<<12 | uint16(v/100%10)<<8 | uint16(v/10%10)<<4 | uint16(v%10)
}

// settle moves to a count queued for the end of a mode 2/3 cycle once
// tick t has reached that point.
func (c *pitChannel) settle(t int64) {
	if c.nextValid && t >= c.nextStart {
		c.start, c.n = c.nextStart, c.nextN
		c.nextValid = false
	}
}

// elapsed is the number of decrementing clocks by tick t; the count is
// loaded on the clock after the write and that clock does not count.
func (c *pitChannel) elapsed(t int64) int64 {
	if t < c.start {
		return 0
	}
	return t - c.start
}

// phase is the position within the current mode 2/3 period.
func (c *pitChannel) phase(t int64) int64 {
	return c.elapsed(t) % c.n
}

// value is the counting element's content at tick t (before encoding).
func (c *pitChannel) value(t int64) int64 {
	switch c.state {
	case pitPaused:
		return c.held
	case pitRunning:
	default:
		return int64(c.cr)
	}
	c.settle(t)
	switch c.mode {
	case 2:
		return c.n - c.phase(t)
	case 3:
		// Mode 3 decrements by two, once through each half period.
		p, half := c.phase(t), (c.n+1)/2
		if p >= half {
			p -= half
		}
		return (c.n - 2*p) &^ 1
	default:
		return c.n - c.elapsed(t)
	}
}

func (c *pitChannel) count(t int64) uint16 {
	if c.state == pitIdle || c.state == pitArmed {
		return c.cr
	}
	return c.encode(c.value(t))
}

// out is the OUT pin at tick t.
func (c *pitChannel) out(t int64) bool {
	switch c.state {
	case pitIdle:
		return c.mode != 0
	case pitArmed:
		return true
	case pitPaused:
		switch c.mode {
		case 0:
			return c.held <= 0
		case 4:
			return c.held != 0
		}
		return true
	}
	c.settle(t)
	switch c.mode {
	case 0, 1:
		return c.n-c.elapsed(t) <= 0
	case 2:
		return c.phase(t) != c.n-1
	case 3:
		return c.phase(t) < (c.n+1)/2
	default: // 4, 5: low for the one clock at terminal count
		return c.n-c.elapsed(t) != 0
	}
}

// nullCount is status bit 6: a count was written but has not reached the
// counting element yet.
func (c *pitChannel) nullCount(t int64) bool {
	switch c.state {
	case pitIdle, pitArmed:
		return true
	case pitPaused:
		return false
	}
	return t < c.start || (c.nextValid && t < c.nextStart)
}

// edgeAfter is the first tick after t at which OUT rises, which is when
// an edge-triggered 8259 input sees an interrupt.
func (c *pitChannel) edgeAfter(t int64) (int64, bool) {
	if c.state != pitRunning {
		return 0, false
	}
	c.settle(t)
	var e int64
	switch c.mode {
	case 2, 3:
		e = c.start + (c.elapsed(t)/c.n+1)*c.n
	case 0, 1:
		e = c.start + c.n
	default: // 4, 5: OUT rises one clock after terminal count
		e = c.start + c.n + 1
	}
	return e, e > t
}

// PIT models the Intel 8254 programmable interval timer at 0x40-0x43 with
// its 1.193182 MHz input clock: three counters, modes 0-5, binary and BCD
// counting, LSB/MSB/two-byte access, the counter latch command and the
// read-back command with status bytes. Channel 0 drives IRQ 0 (Linux uses
// mode 2 as its periodic clockevent, mode 4 for one-shot and mode 0 to
// shut it down); channel 1 counts but drives nothing; channel 2's gate and
// OUT are reached through port 0x61 (see PortB), which Linux uses to
// calibrate against.
//
// Guest time enters only through Clock.Now, called when the guest's
// access depends on it (loading a count, latching or reading a running
// counter, a status byte, a gate edge, reading OUT), and through Expire.
// Channel 0's interrupts are delivered by the exit loop's calls to Expire:
// each call that finds an OUT rising edge due pulses IRQ 0 once, and a
// periodic channel then schedules the first edge after now, so periods
// missed while the guest was not running collapse into one interrupt
// (Linux counts lost ticks from its clocksource) rather than a storm.
//
// Simplifications: OUT edges caused by writing a control word are not
// delivered as interrupts; a count written during a mode 3 cycle takes
// effect at the end of the full period rather than the half period.
// Power-on state: every counter idle (no count), channels 0 and 1 gated
// on, channel 2 gated off; there is no BIOS to start the 18.2 Hz tick.
type PIT struct {
	clock Clock
	irq   IRQSink
	ch    [3]pitChannel

	// armed and edge are channel 0's next interrupt, as a tick.
	armed bool
	edge  int64
}

var (
	_ Timer      = (*PIT)(nil)
	_ PortDevice = (*PIT)(nil)
	_ PortDevice = (*PortB)(nil)
)

// NewPIT returns a PIT in power-on state that reads time from clock and
// pulses PITIRQ on irq.
func NewPIT(clock Clock, irq IRQSink) *PIT {
	p := &PIT{clock: clock, irq: irq}
	for i := range p.ch {
		p.ch[i].access = 3
		p.ch[i].gate = i != 2
	}
	return p
}

func (p *PIT) now() int64 { return pitTick(p.clock.Now()) }

// sample reads the clock only if the counter's state depends on it.
func (p *PIT) sample(c *pitChannel) int64 {
	if c.state != pitRunning {
		return 0
	}
	return p.now()
}

// NextDeadline implements Timer: when channel 0's OUT next rises.
func (p *PIT) NextDeadline() (time.Duration, bool) {
	if !p.armed {
		return 0, false
	}
	return pitTime(p.edge), true
}

// Expire implements Timer. It pulses IRQ 0 at most once per call.
func (p *PIT) Expire(now time.Duration) {
	if !p.armed {
		return
	}
	t := pitTick(now)
	if p.edge > t {
		return
	}
	p.irq.SetIRQ(PITIRQ, true)
	p.irq.SetIRQ(PITIRQ, false)
	p.rearm(t)
}

// rearm schedules channel 0's next interrupt after tick t.
func (p *PIT) rearm(t int64) {
	p.edge, p.armed = p.ch[0].edgeAfter(t)
}

// ReadPort implements PortDevice for 0x40-0x43 (0x43 is write-only and
// reads as 0xff). Wider accesses are split into byte accesses.
func (p *PIT) ReadPort(port uint16, data []byte) {
	for i := range data {
		data[i] = p.readByte(port + uint16(i))
	}
}

// WritePort implements PortDevice for 0x40-0x43.
func (p *PIT) WritePort(port uint16, data []byte) {
	for i, v := range data {
		p.writeByte(port+uint16(i), v)
	}
}

func (p *PIT) readByte(port uint16) uint8 {
	if port < PITPort || port > PITPort+2 {
		return 0xff
	}
	c := &p.ch[port-PITPort]
	if c.statusLatched {
		c.statusLatched = false
		return c.status
	}
	if c.latched {
		switch {
		case c.access == 1:
			c.latched = false
			return uint8(c.latchValue)
		case c.access == 2 || c.latchMSB:
			c.latched = false
			return uint8(c.latchValue >> 8)
		default:
			c.latchMSB = true
			return uint8(c.latchValue)
		}
	}
	v := c.count(p.sample(c))
	switch {
	case c.access == 1:
		return uint8(v)
	case c.access == 2:
		return uint8(v >> 8)
	case c.readMSB:
		c.readMSB = false
		return uint8(v >> 8)
	default:
		c.readMSB = true
		return uint8(v)
	}
}

func (p *PIT) writeByte(port uint16, v uint8) {
	switch {
	case port == PITPort+3:
		p.control(v)
	case port >= PITPort && port <= PITPort+2:
		p.writeCount(int(port-PITPort), v)
	}
}

func (p *PIT) control(v uint8) {
	sel := v >> 6
	if sel == 3 {
		p.readBack(v)
		return
	}
	c := &p.ch[sel]
	rw := v >> 4 & 3
	if rw == 0 {
		// Counter latch: a second latch before the first is read is
		// ignored.
		if !c.latched {
			c.latchValue = c.count(p.sample(c))
			c.latched, c.latchMSB = true, false
		}
		return
	}
	c.access = rw
	c.modeBits = v >> 1 & 7
	c.mode = c.modeBits
	if c.mode > 5 {
		c.mode -= 4
	}
	c.bcd = v&1 != 0
	// A control word resets the counter's control logic: counting stops
	// until a count arrives and OUT takes its mode's initial level.
	c.state = pitIdle
	c.writeMSB, c.readMSB = false, false
	c.latched, c.statusLatched = false, false
	c.nextValid = false
	if sel == 0 {
		p.armed = false
	}
}

func (p *PIT) readBack(v uint8) {
	latchCount := v&0x20 == 0 // the bits are active low
	latchStatus := v&0x10 == 0
	for i := range p.ch {
		if v&(2<<i) == 0 {
			continue
		}
		c := &p.ch[i]
		needCount := latchCount && !c.latched
		needStatus := latchStatus && !c.statusLatched
		if !needCount && !needStatus {
			continue
		}
		t := p.sample(c)
		if needCount {
			c.latchValue = c.count(t)
			c.latched, c.latchMSB = true, false
		}
		if needStatus {
			s := c.access<<4 | c.modeBits<<1
			if c.bcd {
				s |= 0x01
			}
			if c.nullCount(t) {
				s |= 0x40
			}
			if c.out(t) {
				s |= 0x80
			}
			c.status, c.statusLatched = s, true
		}
	}
}

func (p *PIT) writeCount(i int, v uint8) {
	c := &p.ch[i]
	switch c.access {
	case 1:
		c.cr = uint16(v)
	case 2:
		c.cr = uint16(v) << 8
	default:
		if !c.writeMSB {
			c.lsb, c.writeMSB = v, true
			if c.mode == 0 {
				// Mode 0: the first byte stops the counter and
				// drops OUT at once.
				c.state = pitIdle
				if i == 0 {
					p.armed = false
				}
			}
			return
		}
		c.cr = uint16(c.lsb) | uint16(v)<<8
		c.writeMSB = false
	}
	p.load(i)
}

// load acts on a complete count written to counter i.
func (p *PIT) load(i int) {
	c := &p.ch[i]
	var t int64
	switch c.mode {
	case 0, 4:
		c.nextValid = false
		if c.gate {
			t = p.now()
			c.state, c.start, c.n = pitRunning, t+1, c.reload()
		} else {
			c.state, c.held = pitPaused, c.reload()
		}
	case 1, 5:
		// The count waits for the next gate trigger.
		if c.state != pitRunning {
			c.state = pitArmed
		}
		return
	default: // 2, 3
		switch {
		case c.state == pitRunning:
			t = p.now()
			end, _ := c.edgeAfter(t)
			c.nextValid, c.nextStart, c.nextN = true, end, c.reload()
		case c.gate:
			t = p.now()
			c.state, c.start, c.n = pitRunning, t+1, c.reload()
		default:
			c.state, c.held = pitPaused, c.reload()
			return
		}
	}
	if i == 0 {
		p.rearm(t)
	}
}

// setGate drives counter i's GATE input.
func (p *PIT) setGate(i int, high bool) {
	c := &p.ch[i]
	if c.gate == high {
		return
	}
	c.gate = high
	var t int64
	switch {
	case high && c.state == pitPaused && (c.mode == 0 || c.mode == 4):
		t = p.now()
		c.state, c.start, c.n = pitRunning, t+1, c.held
	case high && c.state != pitIdle && (c.mode == 1 || c.mode == 5):
		// Rising edge triggers (or retriggers) the count.
		t = p.now()
		c.state, c.start, c.n = pitRunning, t+1, c.reload()
	case high && c.state == pitPaused:
		t = p.now()
		c.state, c.start, c.n = pitRunning, t+1, c.reload()
		c.nextValid = false
	case !high && c.state == pitRunning && c.mode != 1 && c.mode != 5:
		t = p.now()
		v := c.value(t)
		if c.mode == 0 || c.mode == 4 {
			v = c.n - c.elapsed(t)
		}
		c.state, c.held = pitPaused, v
		c.nextValid = false
	default:
		return
	}
	if i == 0 {
		p.rearm(t)
	}
}

// out2 is channel 2's OUT pin now.
func (p *PIT) out2() bool {
	c := &p.ch[2]
	return c.out(p.sample(c))
}

// PortB models the PC/AT's system control port B, the NMI status and
// control register at Port61 (0x61), as far as a guest without a speaker
// or NMI sources needs it:
//
//   - bit 0 (read/write): channel 2 GATE, the start/stop switch Linux
//     uses to run channel 2 for TSC calibration.
//   - bit 1 (read/write): speaker data enable; stored, no sound.
//   - bits 2-3 (read/write): parity/IOCHK check disables; stored.
//   - bit 4 (read-only): the DRAM refresh request toggle. Hardware flips
//     it every 15.085 µs; here it flips on every read, so a firmware
//     delay loop that waits for a toggle makes progress without reading
//     the clock.
//   - bit 5 (read-only): channel 2 OUT, computed from the clock.
//   - bits 6-7 (read-only): IOCHK and SERR NMI status, always 0.
type PortB struct {
	pit     *PIT
	ctrl    uint8
	refresh bool
}

// NewPortB returns port 0x61 wired to pit's channel 2.
func NewPortB(pit *PIT) *PortB {
	return &PortB{pit: pit}
}

// ReadPort implements PortDevice for port 0x61.
func (q *PortB) ReadPort(port uint16, data []byte) {
	for i := range data {
		if port+uint16(i) != Port61 {
			data[i] = 0xff
			continue
		}
		q.refresh = !q.refresh
		v := q.ctrl
		if q.refresh {
			v |= 0x10
		}
		if q.pit.out2() {
			v |= 0x20
		}
		data[i] = v
	}
}

// WritePort implements PortDevice for port 0x61.
func (q *PortB) WritePort(port uint16, data []byte) {
	for i, v := range data {
		if port+uint16(i) != Port61 {
			continue
		}
		q.ctrl = v & 0x0f
		q.pit.setGate(2, v&0x01 != 0)
	}
}
