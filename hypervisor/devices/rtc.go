package devices

import "time"

// CMOS register indices (MC146818 datasheet; 0x32 and the memory-size
// bytes are PC/AT conventions).
const (
	rtcSeconds    = 0x00
	rtcSecAlarm   = 0x01
	rtcMinutes    = 0x02
	rtcMinAlarm   = 0x03
	rtcHours      = 0x04
	rtcHourAlarm  = 0x05
	rtcWeekday    = 0x06
	rtcDayOfMonth = 0x07
	rtcMonth      = 0x08
	rtcYear       = 0x09
	rtcRegA       = 0x0a
	rtcRegB       = 0x0b
	rtcRegC       = 0x0c
	rtcRegD       = 0x0d

	// RTCCenturyIndex is the CMOS byte holding the century, in the same
	// encoding as the year; the FADT's CENTURY field names it.
	RTCCenturyIndex = 0x32

	regAUIP     = 0x80
	regADivider = 0x70 // DV2..DV0
	regADivRst  = 0x60 // DV2 and DV1 both set: divider chain held in reset

	regBSET  = 0x80
	regBUIE  = 0x10
	regBDM   = 0x04 // 1: binary, 0: BCD
	regB24H  = 0x02
	regCUF   = 0x10
	regCIRQF = 0x80
	regDVRT  = 0x80

	hourPM = 0x80

	// rtcUIPWindow is how long before each update UIP reads 1 (t_BUC in
	// the datasheet); the update itself is instantaneous here.
	rtcUIPWindow = 244 * time.Microsecond
)

// RTC models the MC146818 real-time clock and its 128 bytes of CMOS RAM
// behind the PC's index/data ports 0x70/0x71.
//
// The clock is base (the wall time at power-on, chosen by the caller) plus
// the VM's Clock, plus whatever adjustment the guest made by setting the
// time. base is itself a non-deterministic input: the primary picks it once
// and logs it, and the backup builds its RTC from the logged value. The
// Clock is read only when the guest reads (or writes) a time-dependent
// register: a time or date byte, register A (for UIP) or register C.
//
// The clock runs in UTC and ignores register B's daylight-saving bit. The
// periodic, alarm and update-ended interrupt enables are stored but no
// interrupt is ever raised, so the RTC needs no timer; register C reports
// the update-ended flag (UF) when a second boundary passed since the last
// read of C, for guests that poll it, and never PF or AF.
type RTC struct {
	clock  Clock
	base   time.Time
	offset time.Duration // guest's adjustment: clock = base + Now + offset

	index       uint8
	nmiDisabled bool

	// ram holds every register as stored. While the clock runs, the time
	// bytes (0x00, 0x02, 0x04, 0x06-0x09, the century) are computed and
	// their ram copies unused; while it is stopped (SET, or the divider in
	// reset) ram holds them, the guest edits them, and restarting the
	// clock decodes them into offset.
	ram [128]byte

	lastUF int64 // clock second seen by the last read of register C
}

// NewRTC returns an RTC whose clock reads base at Clock.Now() == 0, with
// register A as a BIOS leaves it (32.768 kHz time base, 1024 Hz rate),
// register B in 24-hour BCD mode, and register D reporting valid RAM.
func NewRTC(clock Clock, base time.Time) *RTC {
	r := &RTC{clock: clock, base: base.Round(0).UTC()}
	r.ram[rtcRegA] = 0x26
	r.ram[rtcRegB] = regB24H
	r.lastUF = r.base.Unix()
	return r
}

// Ports returns the index and data ports.
func (r *RTC) Ports() []PortRange { return []PortRange{{Base: CMOSPort, Size: 2}} }

// Reset models the chip's RESET pin at machine reset: interrupt enables and
// flags clear, time and RAM keep (they are battery backed).
func (r *RTC) Reset() {
	r.ram[rtcRegB] &^= 0x78 // PIE, AIE, UIE, SQWE
}

// NMIDisabled reports bit 7 of the last index written to port 0x70, which
// on a PC gates NMI. ftvm never raises NMIs; the bit is kept for the guest.
func (r *RTC) NMIDisabled() bool { return r.nmiDisabled }

// SetCMOS stores a byte of CMOS RAM (index 0x0e-0x7f), for the VMM to fill
// in what firmware would have left there.
func (r *RTC) SetCMOS(index, value uint8) {
	if index >= 0x0e && index < 0x80 {
		r.ram[index] = value
	}
}

// SetMemorySize fills the PC/AT memory-size bytes the way SeaBIOS reads
// them: base memory (0x15-0x16, KiB), extended memory above 1 MiB
// (0x17-0x18 and 0x30-0x31, KiB, capped), memory between 16 MiB and 4 GiB
// (0x34-0x35, 64 KiB units) and memory above 4 GiB (0x5b-0x5d, 64 KiB
// units). below4G and above4G are byte counts of guest RAM.
func (r *RTC) SetMemorySize(below4G, above4G uint64) {
	const kib, mib = 1 << 10, 1 << 20
	put16 := func(i uint8, v uint64) {
		if v > 0xffff {
			v = 0xffff
		}
		r.ram[i], r.ram[i+1] = uint8(v), uint8(v>>8)
	}
	put16(0x15, 640)
	var ext uint64
	if below4G > mib {
		ext = (below4G - mib) / kib
	}
	put16(0x17, ext)
	put16(0x30, ext)
	var above16 uint64
	if below4G > 16*mib {
		above16 = (below4G - 16*mib) / (64 * kib)
	}
	put16(0x34, above16)
	high := above4G / (64 * kib)
	if high > 0xffffff {
		high = 0xffffff
	}
	r.ram[0x5b], r.ram[0x5c], r.ram[0x5d] = uint8(high), uint8(high>>8), uint8(high>>16)
}

// ReadPort implements PortDevice.
func (r *RTC) ReadPort(port uint16, data []byte) {
	for i := range data {
		switch port + uint16(i) {
		case CMOSPort + 1:
			data[i] = r.readReg(r.index)
		default:
			// The index register is write-only on the PC/AT.
			data[i] = 0xff
		}
	}
}

// WritePort implements PortDevice.
func (r *RTC) WritePort(port uint16, data []byte) {
	for i, v := range data {
		switch port + uint16(i) {
		case CMOSPort:
			r.index = v & 0x7f
			r.nmiDisabled = v&0x80 != 0
		case CMOSPort + 1:
			r.writeReg(r.index, v)
		}
	}
}

func isTimeReg(i uint8) bool {
	switch i {
	case rtcSeconds, rtcMinutes, rtcHours, rtcWeekday, rtcDayOfMonth, rtcMonth, rtcYear, RTCCenturyIndex:
		return true
	}
	return false
}

func (r *RTC) stopped() bool {
	return r.ram[rtcRegB]&regBSET != 0 || r.ram[rtcRegA]&regADivRst == regADivRst
}

func (r *RTC) readReg(i uint8) uint8 {
	switch {
	case isTimeReg(i) && !r.stopped():
		var regs [128]byte
		r.encode(r.guestTime(r.clock.Now()), &regs)
		return regs[i]
	case i == rtcRegA:
		v := r.ram[rtcRegA] &^ regAUIP
		if !r.stopped() {
			t := r.guestTime(r.clock.Now())
			if time.Duration(t.Nanosecond()) >= time.Second-rtcUIPWindow {
				v |= regAUIP
			}
		}
		return v
	case i == rtcRegC:
		var v uint8
		if !r.stopped() {
			if s := r.guestTime(r.clock.Now()).Unix(); s != r.lastUF {
				r.lastUF = s
				v |= regCUF
			}
		}
		if v&regCUF != 0 && r.ram[rtcRegB]&regBUIE != 0 {
			v |= regCIRQF
		}
		return v
	case i == rtcRegD:
		return regDVRT
	}
	return r.ram[i]
}

func (r *RTC) writeReg(i uint8, v uint8) {
	switch {
	case isTimeReg(i):
		if r.stopped() {
			r.ram[i] = v
			return
		}
		// A write while the clock runs takes effect at once and the
		// clock keeps its sub-second phase, as the chip's divider does.
		now := r.clock.Now()
		t := r.guestTime(now)
		r.encode(t, &r.ram)
		r.ram[i] = v
		r.restart(now, time.Duration(t.Nanosecond()))
	case i == rtcRegA:
		wasStopped := r.stopped()
		r.ram[rtcRegA] = v &^ regAUIP
		r.transition(wasStopped)
	case i == rtcRegB:
		wasStopped := r.stopped()
		if v&regBSET != 0 {
			v &^= regBUIE // the datasheet clears UIE whenever SET is 1
		}
		r.ram[rtcRegB] = v
		r.transition(wasStopped)
	case i == rtcRegC, i == rtcRegD:
		// Read-only.
	default:
		r.ram[i] = v
	}
}

// transition latches the time into RAM when the clock stops and folds the
// (possibly guest-edited) RAM back into offset when it restarts.
func (r *RTC) transition(wasStopped bool) {
	switch now := r.stopped(); {
	case !wasStopped && now:
		r.encode(r.guestTime(r.clock.Now()), &r.ram)
	case wasStopped && !now:
		r.restart(r.clock.Now(), 0)
	}
}

// restart sets offset so that the clock reads the time in ram, plus frac,
// at now.
func (r *RTC) restart(now, frac time.Duration) {
	t := r.decode(&r.ram).Add(frac)
	r.offset = t.Sub(r.base) - now
	r.lastUF = t.Unix()
}

func (r *RTC) guestTime(now time.Duration) time.Time {
	if now < 0 {
		now = 0
	}
	return r.base.Add(now).Add(r.offset)
}

func (r *RTC) encodeByte(v int) uint8 {
	if r.ram[rtcRegB]&regBDM != 0 {
		return uint8(v)
	}
	return uint8(v/10%10<<4 | v%10)
}

func (r *RTC) decodeByte(v uint8) int {
	if r.ram[rtcRegB]&regBDM != 0 {
		return int(v)
	}
	return int(v>>4)*10 + int(v&0x0f)
}

// encode writes t's time and date bytes into regs in register B's format.
func (r *RTC) encode(t time.Time, regs *[128]byte) {
	regs[rtcSeconds] = r.encodeByte(t.Second())
	regs[rtcMinutes] = r.encodeByte(t.Minute())
	h := t.Hour()
	if r.ram[rtcRegB]&regB24H != 0 {
		regs[rtcHours] = r.encodeByte(h)
	} else {
		h12 := h % 12
		if h12 == 0 {
			h12 = 12
		}
		regs[rtcHours] = r.encodeByte(h12)
		if h >= 12 {
			regs[rtcHours] |= hourPM
		}
	}
	regs[rtcWeekday] = r.encodeByte(int(t.Weekday()) + 1)
	regs[rtcDayOfMonth] = r.encodeByte(t.Day())
	regs[rtcMonth] = r.encodeByte(int(t.Month()))
	regs[rtcYear] = r.encodeByte(t.Year() % 100)
	regs[RTCCenturyIndex] = r.encodeByte(t.Year() / 100)
}

// decode reads the time bytes in register B's format. Out-of-range fields
// normalize as time.Date does; the weekday byte is ignored (the chip only
// counts it, and time.Date derives it).
func (r *RTC) decode(regs *[128]byte) time.Time {
	hb := regs[rtcHours]
	var h int
	if r.ram[rtcRegB]&regB24H != 0 {
		h = r.decodeByte(hb)
	} else {
		h = r.decodeByte(hb&^hourPM) % 12
		if hb&hourPM != 0 {
			h += 12
		}
	}
	year := r.decodeByte(regs[RTCCenturyIndex])*100 + r.decodeByte(regs[rtcYear])
	return time.Date(year, time.Month(r.decodeByte(regs[rtcMonth])), r.decodeByte(regs[rtcDayOfMonth]),
		h, r.decodeByte(regs[rtcMinutes]), r.decodeByte(regs[rtcSeconds]), 0, time.UTC)
}
