package devices

import (
	"testing"
	"time"
)

type rtcRig struct {
	t   *testing.T
	clk *manualClock
	r   *RTC
}

// rtcBase is a Friday afternoon.
var rtcBase = time.Date(2025, time.July, 4, 13, 45, 30, 0, time.UTC)

func newRTCRig(t *testing.T, base time.Time) *rtcRig {
	clk := &manualClock{}
	return &rtcRig{t: t, clk: clk, r: NewRTC(clk, base)}
}

func (g *rtcRig) read(index uint8) uint8 {
	g.r.WritePort(CMOSPort, []byte{index})
	var b [1]byte
	g.r.ReadPort(CMOSPort+1, b[:])
	return b[0]
}

func (g *rtcRig) write(index, v uint8) {
	g.r.WritePort(CMOSPort, []byte{index})
	g.r.WritePort(CMOSPort+1, []byte{v})
}

// timeRegs reads seconds, minutes, hours, weekday, day, month, year and
// century.
func (g *rtcRig) timeRegs() [8]uint8 {
	return [8]uint8{
		g.read(rtcSeconds), g.read(rtcMinutes), g.read(rtcHours), g.read(rtcWeekday),
		g.read(rtcDayOfMonth), g.read(rtcMonth), g.read(rtcYear), g.read(RTCCenturyIndex),
	}
}

func TestRTCEncodings(t *testing.T) {
	for _, c := range []struct {
		name string
		regB uint8
		now  time.Duration
		want [8]uint8 // sec min hour wday mday mon year century
	}{
		{"bcd 24h", 0x02, 0, [8]uint8{0x30, 0x45, 0x13, 0x06, 0x04, 0x07, 0x25, 0x20}},
		{"bcd 24h +29.999s", 0x02, 29999 * time.Millisecond, [8]uint8{0x59, 0x45, 0x13, 0x06, 0x04, 0x07, 0x25, 0x20}},
		{"bcd 24h +30s", 0x02, 30 * time.Second, [8]uint8{0x00, 0x46, 0x13, 0x06, 0x04, 0x07, 0x25, 0x20}},
		{"bcd 24h midnight", 0x02, 10*time.Hour + 14*time.Minute + 30*time.Second, [8]uint8{0x00, 0x00, 0x00, 0x07, 0x05, 0x07, 0x25, 0x20}},
		{"bcd 24h new year", 0x02, 180*24*time.Hour + 10*time.Hour + 14*time.Minute + 30*time.Second, [8]uint8{0x00, 0x00, 0x00, 0x05, 0x01, 0x01, 0x26, 0x20}},
		{"binary 24h", 0x06, 0, [8]uint8{30, 45, 13, 6, 4, 7, 25, 20}},
		{"binary 24h +1d", 0x06, 24 * time.Hour, [8]uint8{30, 45, 13, 7, 5, 7, 25, 20}},
		{"bcd 12h pm", 0x00, 0, [8]uint8{0x30, 0x45, 0x81, 0x06, 0x04, 0x07, 0x25, 0x20}},
		{"binary 12h pm", 0x04, 0, [8]uint8{30, 45, 0x81, 6, 4, 7, 25, 20}},
		{"bcd 12h midnight", 0x00, 10*time.Hour + 14*time.Minute + 30*time.Second, [8]uint8{0x00, 0x00, 0x12, 0x07, 0x05, 0x07, 0x25, 0x20}},
		{"bcd 12h noon", 0x00, 22*time.Hour + 14*time.Minute + 30*time.Second, [8]uint8{0x00, 0x00, 0x92, 0x07, 0x05, 0x07, 0x25, 0x20}},
		{"bcd 12h 11am", 0x00, 21*time.Hour + 14*time.Minute + 30*time.Second, [8]uint8{0x00, 0x00, 0x11, 0x07, 0x05, 0x07, 0x25, 0x20}},
		{"binary 12h 11pm", 0x04, 9*time.Hour + 14*time.Minute + 30*time.Second, [8]uint8{0, 0, 0x80 | 11, 6, 4, 7, 25, 20}},
	} {
		g := newRTCRig(t, rtcBase)
		g.write(rtcRegB, c.regB)
		g.clk.now = c.now
		if got := g.timeRegs(); got != c.want {
			t.Errorf("%s: registers % x, want % x", c.name, got, c.want)
		}
	}
}

func TestRTCBaseSubSecondAndZone(t *testing.T) {
	// 15:45:30.75 CEST is 13:45:30.75 UTC; the RTC keeps UTC.
	base := time.Date(2025, time.July, 4, 15, 45, 30, 750_000_000, time.FixedZone("CEST", 2*3600))
	g := newRTCRig(t, base)
	g.clk.now = 249 * time.Millisecond
	if s, h := g.read(rtcSeconds), g.read(rtcHours); s != 0x30 || h != 0x13 {
		t.Fatalf("sec %#x hour %#x, want 0x30 0x13", s, h)
	}
	g.clk.now = 250 * time.Millisecond
	if s := g.read(rtcSeconds); s != 0x31 {
		t.Fatalf("sec %#x at the boundary, want 0x31", s)
	}
}

func TestRTCReadsClockOnlyForTime(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.write(0x20, 0x42)
	g.read(0x20)
	g.read(rtcRegB)
	g.read(rtcRegD)
	g.read(rtcSecAlarm)
	g.write(rtcRegB, 0x06)
	g.write(rtcRegA, 0x26)
	if g.clk.reads != 0 {
		t.Fatalf("%d clock reads without any time-dependent access", g.clk.reads)
	}
	g.read(rtcMinutes)
	if g.clk.reads != 1 {
		t.Fatalf("reading minutes read the clock %d times, want 1", g.clk.reads)
	}
}

func TestRTCSetBit(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.clk.now = 10 * time.Second
	// Linux's mc146818_set_time: SET, divider reset, write the time,
	// restore B, restore A.
	g.write(rtcRegB, g.read(rtcRegB)|regBSET)
	saveA := g.read(rtcRegA)
	g.write(rtcRegA, saveA|0x70)
	for i, v := range []uint8{0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19} { // 1999-12-31 23:59:59, Friday
		g.write([]uint8{rtcSeconds, rtcMinutes, rtcHours, rtcWeekday, rtcDayOfMonth, rtcMonth, rtcYear, RTCCenturyIndex}[i], v)
	}
	g.clk.now = 20 * time.Second
	if got := g.read(rtcSeconds); got != 0x59 {
		t.Fatalf("clock ran while SET: seconds %#x", got)
	}
	if got := g.read(rtcRegA); got&regAUIP != 0 {
		t.Fatal("UIP set while updates are stopped")
	}
	g.write(rtcRegB, 0x02)
	g.clk.now = 21 * time.Second
	if got := g.read(rtcSeconds); got != 0x59 {
		t.Fatalf("clock ran while the divider was in reset: seconds %#x", got)
	}
	g.write(rtcRegA, saveA)
	g.clk.now = 21*time.Second + 999*time.Millisecond
	if got := g.read(rtcSeconds); got != 0x59 {
		t.Fatalf("seconds %#x 0.999 s after restart, want 0x59", got)
	}
	g.clk.now = 22 * time.Second
	want := [8]uint8{0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20} // 2000-01-01, Saturday
	if got := g.timeRegs(); got != want {
		t.Fatalf("after rollover % x, want % x", got, want)
	}
	if g.read(rtcRegB) != 0x02 || g.read(rtcRegA) != saveA {
		t.Fatal("register A/B not restored")
	}
	// SET clears UIE.
	g.write(rtcRegB, 0x12)
	g.write(rtcRegB, 0x92)
	if g.read(rtcRegB) != 0x82 {
		t.Fatalf("register B = %#x with SET, want UIE cleared (0x82)", g.read(rtcRegB))
	}
}

func TestRTCWriteWhileRunning(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.write(rtcRegB, 0x06) // binary
	g.clk.now = 500 * time.Millisecond
	g.write(rtcHours, 7)
	if got := g.read(rtcHours); got != 7 {
		t.Fatalf("hours %d after writing 7", got)
	}
	g.clk.now = 999 * time.Millisecond
	if got := g.read(rtcSeconds); got != 30 {
		t.Fatalf("seconds %d, want 30: a running write must keep the second's phase", got)
	}
	g.clk.now = time.Second
	if got, h := g.read(rtcSeconds), g.read(rtcHours); got != 31 || h != 7 {
		t.Fatalf("%d:%d, want 7:..:31", h, got)
	}
}

func TestRTCRegisterCReadClears(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.write(rtcRegC, 0xff) // read-only
	if got := g.read(rtcRegC); got != 0 {
		t.Fatalf("register C = %#x before any update", got)
	}
	g.clk.now = 1500 * time.Millisecond
	if got := g.read(rtcRegC); got != regCUF {
		t.Fatalf("register C = %#x after an update, want UF", got)
	}
	if got := g.read(rtcRegC); got != 0 {
		t.Fatalf("register C = %#x on the second read, want 0 (read clears)", got)
	}
	g.write(rtcRegB, 0x12) // UIE
	g.clk.now = 2500 * time.Millisecond
	if got := g.read(rtcRegC); got != regCUF|regCIRQF {
		t.Fatalf("register C = %#x with UIE, want UF|IRQF", got)
	}
	if got := g.read(rtcRegD); got != regDVRT {
		t.Fatalf("register D = %#x, want VRT", got)
	}
}

func TestRTCUIPWindow(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.write(rtcRegA, 0xa6|regAUIP) // UIP is read-only
	for _, c := range []struct {
		now time.Duration
		uip bool
	}{
		{0, false},
		{time.Second - 244*time.Microsecond - 1, false},
		{time.Second - 244*time.Microsecond, true},
		{time.Second - 1, true},
		{time.Second, false},
		{100*time.Second + 999_900*time.Microsecond, true},
	} {
		g.clk.now = c.now
		got := g.read(rtcRegA)
		if got&^regAUIP != 0x26 {
			t.Fatalf("register A = %#x, want the stored 0x26 (plus UIP)", got)
		}
		if (got&regAUIP != 0) != c.uip {
			t.Errorf("UIP at %v = %v, want %v", c.now, !c.uip, c.uip)
		}
	}
}

func TestRTCIndexAndRAM(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.r.WritePort(CMOSPort, []byte{0x80 | 0x40})
	if !g.r.NMIDisabled() {
		t.Fatal("NMI-disable bit not kept")
	}
	g.r.WritePort(CMOSPort+1, []byte{0x77})
	if g.read(0x40) != 0x77 {
		t.Fatal("index bit 7 not masked off the register number")
	}
	if g.r.NMIDisabled() {
		t.Fatal("NMI-disable bit stuck")
	}
	var b [1]byte
	g.r.ReadPort(CMOSPort, b[:])
	if b[0] != 0xff {
		t.Fatalf("index port read %#x, want 0xff (write-only)", b[0])
	}
	for i := 0x0e; i < 0x80; i++ {
		if i == RTCCenturyIndex {
			continue
		}
		g.write(uint8(i), uint8(i)^0x5a)
	}
	for i := 0x0e; i < 0x80; i++ {
		if i != RTCCenturyIndex && g.read(uint8(i)) != uint8(i)^0x5a {
			t.Fatalf("CMOS RAM byte %#x lost", i)
		}
	}
	g.write(rtcHourAlarm, 0xc0) // alarms are plain storage
	if g.read(rtcHourAlarm) != 0xc0 {
		t.Fatal("alarm register lost")
	}
}

func TestRTCMemorySize(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.r.SetMemorySize(3<<30, 2<<30) // 3 GiB low, 2 GiB high
	check := func(i uint8, want uint8) {
		t.Helper()
		if got := g.read(i); got != want {
			t.Errorf("CMOS %#x = %#x, want %#x", i, got, want)
		}
	}
	check(0x15, 0x80)
	check(0x16, 0x02) // 640 KiB
	check(0x17, 0xff)
	check(0x18, 0xff) // capped
	check(0x30, 0xff)
	check(0x31, 0xff)
	above16 := (3<<30 - 16<<20) / (64 << 10) // 0xbf00
	check(0x34, uint8(above16))
	check(0x35, uint8(above16>>8))
	check(0x5b, 0x00)
	check(0x5c, 0x80)
	check(0x5d, 0x00) // 2 GiB / 64 KiB = 0x8000
}

func FuzzRTC(f *testing.F) {
	f.Add([]byte{0x0b, 0x86, 0x00, 0x12, 0x0b, 0x02, 0x0a, 0x70, 0x09, 0x99}, uint32(1000))
	f.Add([]byte{0x0b, 0x80, 0x04, 0xff, 0x08, 0x13, 0x32, 0x99, 0x0b, 0x00}, uint32(7))
	f.Fuzz(func(t *testing.T, ops []byte, step uint32) {
		g := newRTCRig(t, rtcBase)
		for i := 0; i+1 < len(ops); i += 2 {
			g.clk.now += time.Duration(step) * time.Microsecond
			idx, v := ops[i]&0x7f, ops[i+1]
			if ops[i]&0x80 != 0 {
				g.write(idx, v)
			} else {
				g.read(idx)
			}
			if g.read(rtcRegD) != regDVRT {
				t.Fatal("register D changed")
			}
			if g.read(rtcRegA)&0x7f != g.r.ram[rtcRegA]&0x7f {
				t.Fatal("register A low bits differ from what was stored")
			}
		}
		// Whatever the guest did, a running clock yields in-range fields.
		g.write(rtcRegB, 0x06)
		g.write(rtcRegA, 0x26)
		s, m, h := g.read(rtcSeconds), g.read(rtcMinutes), g.read(rtcHours)
		d, mo := g.read(rtcDayOfMonth), g.read(rtcMonth)
		if s > 59 || m > 59 || h > 23 || d < 1 || d > 31 || mo < 1 || mo > 12 {
			t.Fatalf("out-of-range time %d-%d %d:%d:%d", mo, d, h, m, s)
		}
	})
}

func TestRTCSet12Hour(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.write(rtcRegB, regBSET) // 12h BCD, stopped
	g.write(rtcHours, 0x12)   // 12 AM
	g.write(rtcRegB, 0)
	if got := g.read(rtcHours); got != 0x12 {
		t.Fatalf("12 AM round trip: %#x", got)
	}
	g.write(rtcRegB, regBSET)
	g.write(rtcHours, 0x80|0x07) // 7 PM
	g.write(rtcRegB, 0)
	// While the clock runs, the mode only changes how it is presented.
	g.write(rtcRegB, regB24H)
	if got := g.read(rtcHours); got != 0x19 {
		t.Fatalf("7 PM read in 24h mode: %#x, want 0x19", got)
	}
}

func TestRTCResetAndSetCMOS(t *testing.T) {
	g := newRTCRig(t, rtcBase)
	g.r.SetCMOS(0x10, 0x40)
	g.r.SetCMOS(0x05, 0x40) // not RAM: ignored
	g.write(rtcRegB, 0x7e)
	g.clk.now = 5 * time.Second
	g.r.Reset()
	if g.read(0x10) != 0x40 || g.read(rtcHourAlarm) != 0 {
		t.Fatal("SetCMOS wrote the wrong bytes")
	}
	if got := g.read(rtcRegB); got != 0x06 {
		t.Fatalf("register B after reset = %#x, want interrupt enables cleared (0x06)", got)
	}
	if got := g.read(rtcSeconds); got != 35 {
		t.Fatalf("seconds after reset = %d, want 35: the clock is battery backed", got)
	}
}
