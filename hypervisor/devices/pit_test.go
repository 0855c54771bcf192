package devices

import (
	"testing"
	"time"
)

// pitTestClock is a Clock whose time the test sets; it counts reads so
// tests can check the PIT reads time only when an access needs it.
type pitTestClock struct {
	now   time.Duration
	reads int
}

func (c *pitTestClock) Now() time.Duration {
	c.reads++
	return c.now
}

// pitTestIRQ records pulses on IRQ 0 and flags anything else.
type pitTestIRQ struct {
	t      *testing.T
	level  bool
	pulses int
}

func (s *pitTestIRQ) SetIRQ(line uint8, high bool) {
	if line != PITIRQ {
		s.t.Fatalf("SetIRQ on line %d", line)
	}
	if high == s.level {
		s.t.Fatalf("SetIRQ(%v) twice", high)
	}
	s.level = high
	if !high {
		s.pulses++
	}
}

type pitRig struct {
	t    *testing.T
	pit  *PIT
	pb   *PortB
	clk  *pitTestClock
	irq  *pitTestIRQ
	tick int64 // the period used by helpers, in input clocks
}

func newPITRig(t *testing.T) *pitRig {
	clk := &pitTestClock{}
	irq := &pitTestIRQ{t: t}
	pit := NewPIT(clk, irq)
	return &pitRig{t: t, pit: pit, pb: NewPortB(pit), clk: clk, irq: irq}
}

// program writes a control word and a two-byte count the way Linux does.
func (r *pitRig) program(ch int, control uint8, count uint16) {
	picOut(r.pit, 0x43, control)
	picOut(r.pit, 0x40+uint16(ch), uint8(count))
	picOut(r.pit, 0x40+uint16(ch), uint8(count>>8))
}

func (r *pitRig) read16(ch int) uint16 {
	lo := picIn(r.pit, 0x40+uint16(ch))
	hi := picIn(r.pit, 0x40+uint16(ch))
	return uint16(lo) | uint16(hi)<<8
}

func (r *pitRig) status(ch int) uint8 {
	picOut(r.pit, 0x43, 0xe0|2<<ch)
	return picIn(r.pit, 0x40+uint16(ch))
}

func (r *pitRig) deadline() time.Duration {
	r.t.Helper()
	d, ok := r.pit.NextDeadline()
	if !ok {
		r.t.Fatal("no deadline armed")
	}
	return d
}

// at moves the clock to the start of input clock tick.
func (r *pitRig) at(tick int64) { r.clk.now = pitTime(tick) }

func TestPITTickConversions(t *testing.T) {
	for _, tick := range []int64{0, 1, 2, 1193, 1193182, 1193182 * 3600 * 24 * 365} {
		d := pitTime(tick)
		if pitTick(d) != tick || (d > 0 && pitTick(d-1) != tick-1) {
			t.Fatalf("tick %d: pitTime %v is not the first instant of the tick", tick, d)
		}
	}
	if pitTime(PITHz) != time.Second {
		t.Fatalf("pitTime(PITHz) = %v", pitTime(PITHz))
	}
}

func TestPITMode2Periodic(t *testing.T) {
	for _, control := range []uint8{0x34, 0x36, 0x3c} { // mode 2, mode 3, mode 2 as "6"
		r := newPITRig(t)
		r.program(0, control, 1193)
		var prev time.Duration
		for k := int64(1); k <= 2000; k++ {
			d := r.deadline()
			// Counting starts on the clock after the write (tick 1).
			if want := pitTime(1 + k*1193); d != want {
				t.Fatalf("%#x: deadline %d = %v, want %v", control, k, d, want)
			}
			if k > 1 {
				gap := float64(d - prev)
				if exact := 1193 * 1e9 / float64(PITHz); gap < exact-1 || gap > exact+1 {
					t.Fatalf("%#x: period %v ns, want %.1f", control, gap, exact)
				}
			}
			r.pit.Expire(d - 1)
			if r.irq.pulses != int(k-1) {
				t.Fatalf("%#x: fired before its deadline", control)
			}
			r.clk.now = d
			r.pit.Expire(d)
			if r.irq.pulses != int(k) {
				t.Fatalf("%#x: %d pulses after %d expiries", control, r.irq.pulses, k)
			}
			prev = d
		}
		if d := r.deadline(); d != pitTime(1+2001*1193) {
			t.Fatalf("%#x: drift: deadline %v", control, d)
		}
	}
}

func TestPITMissedPeriodsCollapse(t *testing.T) {
	r := newPITRig(t)
	r.program(0, 0x34, 1193)
	d := r.deadline()
	period := pitTime(1193)
	now := d + 10*period + period/2
	r.clk.now = now
	r.pit.Expire(now)
	if r.irq.pulses != 1 {
		t.Fatalf("%d pulses for 11 missed periods, want 1", r.irq.pulses)
	}
	next := r.deadline()
	if next <= now || next > now+period {
		t.Fatalf("next deadline %v, want the boundary after %v", next, now)
	}
	if tk := pitTick(next); (tk-1)%1193 != 0 || pitTime(tk) != next {
		t.Fatalf("next deadline %v off the period grid", next)
	}
	r.pit.Expire(now) // again at the same time: nothing due
	if r.irq.pulses != 1 {
		t.Fatal("second Expire at the same time fired")
	}
}

func TestPITOneShot(t *testing.T) {
	for _, tc := range []struct {
		name    string
		control uint8
		extra   int64 // OUT rises this many clocks after terminal count
	}{
		{"mode 0", 0x30, 0},
		{"mode 4 (Linux oneshot)", 0x38, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newPITRig(t)
			r.at(5000)
			picOut(r.pit, 0x43, tc.control)
			if _, ok := r.pit.NextDeadline(); ok {
				t.Fatal("armed by the control word alone")
			}
			picOut(r.pit, 0x40, 1000&0xff)
			picOut(r.pit, 0x40, 1000>>8)
			d := r.deadline()
			if want := pitTime(5000 + 1 + 1000 + tc.extra); d != want {
				t.Fatalf("deadline %v, want %v", d, want)
			}
			r.clk.now = d
			r.pit.Expire(d)
			if r.irq.pulses != 1 {
				t.Fatalf("%d pulses", r.irq.pulses)
			}
			if _, ok := r.pit.NextDeadline(); ok {
				t.Fatal("one-shot re-armed itself")
			}
			r.clk.now += time.Second
			r.pit.Expire(r.clk.now)
			if r.irq.pulses != 1 {
				t.Fatal("one-shot fired twice")
			}
			// pit_next_event writes just a new count: armed again
			// from now.
			r.at(9000)
			picOut(r.pit, 0x40, 50)
			picOut(r.pit, 0x40, 0)
			if want := pitTime(9000 + 1 + 50 + tc.extra); r.deadline() != want {
				t.Fatalf("re-armed deadline %v, want %v", r.deadline(), want)
			}
		})
	}
}

func TestPITLinuxShutdown(t *testing.T) {
	// pit_shutdown: mode 0 with a zero count, which the chip treats as
	// 65536 and so fires once more, ~55 ms later.
	r := newPITRig(t)
	r.program(0, 0x34, 1193)
	r.at(100)
	r.program(0, 0x30, 0)
	if want := pitTime(101 + 65536); r.deadline() != want {
		t.Fatalf("deadline %v, want %v", r.deadline(), want)
	}
	r.clk.now = r.deadline()
	r.pit.Expire(r.clk.now)
	if _, ok := r.pit.NextDeadline(); ok || r.irq.pulses != 1 {
		t.Fatalf("pulses %d, still armed %v", r.irq.pulses, ok)
	}
	// A bare control word stops the counter.
	r.program(0, 0x34, 1193)
	picOut(r.pit, 0x43, 0x34)
	if _, ok := r.pit.NextDeadline(); ok {
		t.Fatal("armed after a control word")
	}
}

func TestPITLatchIsStable(t *testing.T) {
	r := newPITRig(t)
	r.program(0, 0x34, 1193)
	r.at(1 + 100)
	reads := r.clk.reads
	picOut(r.pit, 0x43, 0x00) // i8253_read's latch command
	if r.clk.reads != reads+1 {
		t.Fatalf("latch read the clock %d times", r.clk.reads-reads)
	}
	r.clk.now += 500 * time.Microsecond
	picOut(r.pit, 0x43, 0x00) // ignored: the first latch is unread
	if got := r.read16(0); got != 1093 {
		t.Fatalf("latched count %d, want 1093", got)
	}
	if r.clk.reads != reads+1 {
		t.Fatal("reading a latched count read the clock")
	}
	// Now unlatched: the live count has moved on.
	r.at(1 + 1193 + 7)
	picOut(r.pit, 0x43, 0x00)
	if got := r.read16(0); got != 1193-7 {
		t.Fatalf("count %d in the second period, want %d", got, 1193-7)
	}
	// i8253_read's sanity check: a mode 2 count is always in [1, LATCH].
	for tick := int64(1); tick < 3*1193; tick += 97 {
		r.at(tick)
		picOut(r.pit, 0x43, 0x00)
		if got := r.read16(0); got < 1 || got > 1193 {
			t.Fatalf("tick %d: count %d outside [1, 1193]", tick, got)
		}
	}
}

func TestPITAccessModes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		control uint8
		writes  []uint8
		reads   []uint8
	}{
		{"LSB only", 0x50, []uint8{0x80}, []uint8{0x80, 0x80}},
		{"MSB only", 0x60, []uint8{0x02}, []uint8{0x02, 0x02}},
		{"LSB then MSB", 0x70, []uint8{0x34, 0x12}, []uint8{0x34, 0x12, 0x34, 0x12}},
		{"BCD", 0x71, []uint8{0x99, 0x19}, []uint8{0x99, 0x19}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newPITRig(t)
			r.at(10)
			picOut(r.pit, 0x43, tc.control)
			for _, v := range tc.writes {
				picOut(r.pit, 0x41, v)
			}
			// Same clock tick as the write: not yet decremented.
			for i, want := range tc.reads {
				if got := picIn(r.pit, 0x41); got != want {
					t.Fatalf("read %d: %#x, want %#x", i, got, want)
				}
			}
		})
	}

	// BCD counts in decimal: 1000 - 1 = 0999.
	r := newPITRig(t)
	r.program(1, 0x71, 0x1000)
	r.at(2)
	if got := r.read16(1); got != 0x0999 {
		t.Fatalf("BCD count %#x, want 0x0999", got)
	}

	// Read and write flip-flops are independent (datasheet example).
	r = newPITRig(t)
	r.program(1, 0x74, 0x2000)
	r.at(1 + 0x10)
	lo := picIn(r.pit, 0x41)
	picOut(r.pit, 0x41, 0x00)
	hi := picIn(r.pit, 0x41)
	picOut(r.pit, 0x41, 0x30)
	if lo != 0xf0 || hi != 0x1f {
		t.Fatalf("interleaved read %#x %#x, want 0xf0 0x1f", lo, hi)
	}
	if r.ch1Count() != 0x3000 {
		t.Fatalf("interleaved write loaded %#x", r.ch1Count())
	}

	// Mode 0: the first byte of a new count stops the counter.
	r = newPITRig(t)
	r.program(0, 0x30, 1000)
	picOut(r.pit, 0x40, 0x10)
	if _, ok := r.pit.NextDeadline(); ok {
		t.Fatal("mode 0 still armed after the first byte")
	}
	if r.status(0)&0x80 != 0 {
		t.Fatal("mode 0 OUT high after the first byte")
	}
	picOut(r.pit, 0x40, 0x00)
	if _, ok := r.pit.NextDeadline(); !ok {
		t.Fatal("mode 0 not armed after the second byte")
	}
}

func (r *pitRig) ch1Count() uint16 { return r.pit.ch[1].cr }

func TestPITReadBack(t *testing.T) {
	r := newPITRig(t)
	r.at(50)
	picOut(r.pit, 0x43, 0x34)
	if got := r.status(0); got != 0xf4 {
		t.Fatalf("after control word: status %#x, want 0xf4 (OUT, null count, 0x34)", got)
	}
	picOut(r.pit, 0x40, 1193&0xff)
	picOut(r.pit, 0x40, 1193>>8)
	if got := r.status(0); got != 0xf4 {
		t.Fatalf("count not yet loaded: status %#x, want 0xf4", got)
	}
	r.at(51)
	if got := r.status(0); got != 0xb4 {
		t.Fatalf("running: status %#x, want 0xb4", got)
	}
	r.at(51 + 1192)
	if got := r.status(0); got != 0x34 {
		t.Fatalf("count 1: status %#x, want OUT low 0x34", got)
	}

	// Mode 0 on channel 2, gate low: loaded but not counting, OUT low.
	r.at(1000)
	r.program(2, 0xb0, 10)
	if got := r.status(2); got != 0x30 {
		t.Fatalf("mode 0, gate low: status %#x, want 0x30", got)
	}
	picOut(r.pb, 0x61, 0x01)
	r.at(1001 + 9)
	if got := r.status(2); got&0x80 != 0 {
		t.Fatalf("mode 0 before terminal count: status %#x, want OUT low", got)
	}
	r.at(1001 + 10)
	if got := r.status(2); got != 0xb0 {
		t.Fatalf("mode 0 at terminal count: status %#x, want 0xb0", got)
	}

	// Count and status together: status first, then the count; and a
	// second read-back before reading keeps the first values.
	r = newPITRig(t)
	r.program(1, 0x76, 1000) // mode 3
	r.at(1 + 100)
	picOut(r.pit, 0x43, 0xc4) // latch count and status of counter 1
	r.at(1 + 700)
	picOut(r.pit, 0x43, 0xc4)
	if got := picIn(r.pit, 0x41); got != 0xb6 {
		t.Fatalf("status %#x, want 0xb6", got)
	}
	if got := r.read16(1); got != 1000-200 {
		t.Fatalf("latched mode 3 count %d, want 800", got)
	}
	// Several counters at once; count only.
	r.program(2, 0xb4, 500)
	picOut(r.pb, 0x61, 0x01)
	r.at(1 + 800)
	picOut(r.pit, 0x43, 0xdc) // latch the counts (not status) of counters 1 and 2
	r.at(5000)
	if got := r.read16(1); got == 0 || got&1 != 0 {
		t.Fatalf("mode 3 count %d should be even and nonzero", got)
	}
	if got := r.status(2); got&0x3f != 0x34 {
		t.Fatalf("status %#x", got)
	}
}

func TestPITChannel2AndPort61(t *testing.T) {
	// pit_calibrate_tsc: gate on, speaker off, mode 0 with a 50 ms
	// count, then poll 0x61 bit 5 until OUT goes high.
	r := newPITRig(t)
	r.at(12345)
	v := picIn(r.pb, 0x61)
	picOut(r.pb, 0x61, v&^0x02|0x01)
	const latch = PITHz / 20
	r.program(2, 0xb0, latch)
	start := pitTick(r.clk.now) + 1
	var prevRefresh uint8 = 0xff
	polls := 0
	for {
		got := picIn(r.pb, 0x61)
		if got&0x0f != 0x01 {
			t.Fatalf("0x61 control bits %#x, want 0x01", got&0x0f)
		}
		if refresh := got & 0x10; refresh == prevRefresh {
			t.Fatal("refresh bit did not toggle between reads")
		} else {
			prevRefresh = refresh
		}
		if got&0x20 != 0 {
			break
		}
		polls++
		r.clk.now += 10 * time.Microsecond
	}
	if pitTick(r.clk.now) < start+latch || pitTick(r.clk.now-10*time.Microsecond) >= start+latch {
		t.Fatalf("OUT went high at tick %d, terminal count at %d", pitTick(r.clk.now), start+latch)
	}
	if polls < 4000 {
		t.Fatalf("only %d polls for 50 ms", polls)
	}
	if r.irq.pulses != 0 {
		t.Fatal("channel 2 raised IRQ 0")
	}

	// quick_pit_calibrate: mode 0 from 0xffff, unlatched LSB/MSB reads.
	r.program(2, 0xb0, 0xffff)
	base := pitTick(r.clk.now) + 1
	r.at(base + 300)
	if lsb, msb := picIn(r.pit, 0x42), picIn(r.pit, 0x42); lsb != 0xd3 || msb != 0xfe {
		t.Fatalf("pit_expect_msb reads %#x %#x, want 0xd3 0xfe", lsb, msb)
	}

	// Gate low stops a mode 0 count; gate high resumes it.
	picOut(r.pb, 0x61, 0x00)
	r.at(base + 5000)
	if got := r.read16(2); got != 0xffff-300 {
		t.Fatalf("count %#x with gate low, want %#x", got, 0xffff-300)
	}
	picOut(r.pb, 0x61, 0x01)
	r.at(base + 5000 + 1 + 200)
	if got := r.read16(2); got != 0xffff-500 {
		t.Fatalf("count %#x after resume, want %#x", got, 0xffff-500)
	}

	// Mode 2 with the gate low: OUT high, count held; rising edge
	// reloads.
	r.program(2, 0xb4, 100)
	picOut(r.pb, 0x61, 0x00)
	if picIn(r.pb, 0x61)&0x20 == 0 {
		t.Fatal("mode 2 OUT low with gate low")
	}
	r.clk.now += time.Second
	picOut(r.pb, 0x61, 0x01)
	if got := r.read16(2); got != 100 {
		t.Fatalf("count %d right after the gate edge, want 100", got)
	}

	// Mode 1: the gate's rising edge triggers; OUT low until TC.
	r.program(2, 0xb2, 10)
	if picIn(r.pb, 0x61)&0x20 == 0 {
		t.Fatal("mode 1 OUT low before trigger")
	}
	picOut(r.pb, 0x61, 0x00)
	picOut(r.pb, 0x61, 0x01)
	trig := pitTick(r.clk.now) + 1
	r.at(trig + 9)
	if picIn(r.pb, 0x61)&0x20 != 0 {
		t.Fatal("mode 1 OUT high before TC")
	}
	r.at(trig + 10)
	if picIn(r.pb, 0x61)&0x20 == 0 {
		t.Fatal("mode 1 OUT low after TC")
	}

	// Mode 5: a one-clock low strobe after the trigger.
	r.program(2, 0xba, 10)
	picOut(r.pb, 0x61, 0x00)
	picOut(r.pb, 0x61, 0x01)
	trig = pitTick(r.clk.now) + 1
	for _, want := range []struct {
		tick int64
		high bool
	}{{9, true}, {10, false}, {11, true}} {
		r.at(trig + want.tick)
		if got := picIn(r.pb, 0x61)&0x20 != 0; got != want.high {
			t.Fatalf("mode 5 OUT at %d = %v", want.tick, got)
		}
	}

	// Other bits: speaker enable and check disables read back; NMI
	// status reads 0.
	picOut(r.pb, 0x61, 0xfe)
	if got := picIn(r.pb, 0x61); got&0xcf != 0x0e {
		t.Fatalf("0x61 %#x, want control bits 0x0e and no NMI status", got)
	}
}

func TestPITReadsClockOnlyWhenNeeded(t *testing.T) {
	r := newPITRig(t)
	picOut(r.pit, 0x43, 0x34)
	picOut(r.pit, 0x40, 0xa9)
	picOut(r.pb, 0x61, 0x00)
	picIn(r.pb, 0x61) // channel 2 idle: OUT needs no clock
	r.status(1)       // idle counter
	if r.clk.reads != 0 {
		t.Fatalf("%d clock reads before any count was loaded", r.clk.reads)
	}
	picOut(r.pit, 0x40, 0x04)
	if r.clk.reads != 1 {
		t.Fatalf("loading a count read the clock %d times", r.clk.reads)
	}
	r.pit.NextDeadline()
	r.pit.Expire(time.Hour)
	if r.clk.reads != 1 {
		t.Fatal("NextDeadline/Expire read the clock")
	}
}

func TestPITMode2NewCountAtCycleEnd(t *testing.T) {
	r := newPITRig(t)
	r.program(0, 0x34, 1193)
	r.at(1 + 500)
	picOut(r.pit, 0x40, 2386&0xff)
	picOut(r.pit, 0x40, 2386>>8)
	if got := r.deadline(); got != pitTime(1+1193) {
		t.Fatalf("current cycle changed: deadline %v", got)
	}
	if r.status(0)&0x40 == 0 {
		t.Fatal("null count clear before the new count is loaded")
	}
	r.clk.now = r.deadline()
	r.pit.Expire(r.clk.now)
	if got := r.deadline(); got != pitTime(1+1193+2386) {
		t.Fatalf("deadline after reload %v, want %v", got, pitTime(1+1193+2386))
	}
	r.at(1 + 1193 + 10)
	picOut(r.pit, 0x43, 0x00)
	if got := r.read16(0); got != 2386-10 {
		t.Fatalf("count %d, want %d", got, 2386-10)
	}
}

// FuzzDevices feeds arbitrary port traffic, line changes and clock
// advances to a PIC pair wired to a PIT and port 0x61, the way the exit
// loop drives them, and checks the invariants the loop relies on.
func FuzzDevices(f *testing.F) {
	f.Add([]byte{0, 0, 0x11, 0, 1, 0x20, 0, 1, 0x04, 0, 1, 0x01, 2, 3, 0x34, 2, 0, 0xa9, 2, 0, 0x04, 5, 200, 6, 0})
	f.Add([]byte{2, 3, 0xb0, 7, 0, 1, 2, 2, 0xff, 2, 2, 0xff, 3, 4, 5, 9, 3, 4})
	f.Add([]byte{0, 4, 0xff, 0, 5, 0xff, 4, 9, 1, 6, 0, 0, 0, 0x0c, 1, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		clk := &pitTestClock{}
		pic := NewPICPair()
		pit := NewPIT(clk, pic)
		pb := NewPortB(pit)
		picPorts := []uint16{0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1}
		for len(ops) >= 3 {
			op, a, b := ops[0], ops[1], ops[2]
			ops = ops[3:]
			switch op % 8 {
			case 0:
				picOut(pic, picPorts[int(a)%len(picPorts)], b)
			case 1:
				picIn(pic, picPorts[int(a)%len(picPorts)])
			case 2:
				picOut(pit, 0x40+uint16(a%4), b)
			case 3:
				picIn(pit, 0x40+uint16(a%4))
			case 4:
				pic.SetIRQ(a%18, b&1 != 0)
			case 5:
				clk.now += time.Duration(a)*time.Duration(b)*time.Microsecond + time.Duration(b)
				if d, ok := pit.NextDeadline(); ok && d <= clk.now {
					pit.Expire(clk.now)
				}
				if d, ok := pit.NextDeadline(); ok && d <= clk.now {
					t.Fatalf("deadline %v not after %v after Expire", d, clk.now)
				}
			case 6:
				if !pic.Pending() {
					break
				}
				mb, sb := pic.master.vectorBase, pic.slave.vectorBase
				v, ok := pic.Acknowledge()
				if !ok {
					t.Fatal("Pending but Acknowledge not ok")
				}
				if v&^7 != mb && v&^7 != sb {
					t.Fatalf("vector %#x outside bases %#x/%#x", v, mb, sb)
				}
			case 7:
				if a&1 != 0 {
					picOut(pb, 0x61, b)
				} else {
					picIn(pb, 0x61)
				}
			}
			if d, ok := pit.NextDeadline(); ok && d < 0 {
				t.Fatalf("negative deadline %v", d)
			}
		}
	})
}
