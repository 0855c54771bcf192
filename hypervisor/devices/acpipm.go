package devices

import (
	"math/bits"
	"time"
)

// SleepTypeS5 is the SLP_TYPx value that means "soft off" on ftvm's machine.
// The DSDT's \_S5 package advertises the same value; the ACPI spec leaves
// the encoding to the platform.
const SleepTypeS5 = 5

// PM1 register bits (ACPI spec, "PM1 Event Grouping" and "PM1 Control
// Grouping").
const (
	pm1PwrBtnSts = 1 << 8

	pm1CntSCIEn   = 1 << 0
	pm1CntGblRls  = 1 << 2
	pm1CntSlpTyp  = 7 << 10
	pm1CntSlpEn   = 1 << 13
	pm1CntSlpTypS = 10
)

// pmTimerMask keeps the 24 bits of a timer without TMR_VAL_EXT.
const pmTimerMask = 1<<24 - 1

// PMTimerValue is the ACPI PM timer's count at VM time now: the number of
// 3.579545 MHz ticks since power-on, modulo 2^24. It is exact (integer
// arithmetic, no drift however long the VM runs).
func PMTimerValue(now time.Duration) uint32 {
	if now < 0 {
		return 0
	}
	// now * PMTimerHz needs up to 85 bits; the quotient fits in 64 bits
	// and hi < 1e9 keeps Div64 from panicking.
	hi, lo := bits.Mul64(uint64(now), PMTimerHz)
	ticks, _ := bits.Div64(hi, lo, uint64(time.Second))
	return uint32(ticks & pmTimerMask)
}

// ACPIPM models the ACPI fixed-hardware registers ftvm's FADT advertises:
// the PM1a event block (PM1_STS, write-1-to-clear, and PM1_EN), the PM1a
// control block and the 24-bit PM timer.
//
// ACPI is always enabled: the FADT has no SMI_CMD, so SCI_EN reads 1
// whatever the guest writes. Writing SLP_EN with SLP_TYP = SleepTypeS5
// requests power-off; other sleep types are ignored, as the DSDT offers
// no other sleep state. The timer never sets TMR_STS (its bit-23 carry
// would need a timer in the VMM and Linux does not use it); TMR_EN is
// stored. The one event source is the fixed power button
// (PressPowerButton), which sets PWRBTN_STS and asserts the SCI while
// PWRBTN_EN is set, so the VMM can ask the guest to shut down cleanly.
type ACPIPM struct {
	clock Clock
	power PowerControl
	irq   IRQSink

	sts, en, cnt uint16
	sciHigh      bool
}

// NewACPIPM returns the PM registers in their power-on state. irq, if not
// nil, receives the SCI on SCIIRQ (level: high while an enabled event is
// pending).
func NewACPIPM(clock Clock, power PowerControl, irq IRQSink) *ACPIPM {
	return &ACPIPM{clock: clock, power: power, irq: irq}
}

// Ports returns the three register blocks.
func (p *ACPIPM) Ports() []PortRange {
	return []PortRange{
		{Base: PM1aEventPort, Size: 4},
		{Base: PM1aControlPort, Size: 2},
		{Base: PMTimerPort, Size: 4},
	}
}

// Reset clears status, enables and control, as at power-on.
func (p *ACPIPM) Reset() {
	p.sts, p.en, p.cnt = 0, 0, 0
	p.updateSCI()
}

// PressPowerButton signals a fixed-feature power button press. Call it from
// the exit loop at an exit.
func (p *ACPIPM) PressPowerButton() {
	p.sts |= pm1PwrBtnSts
	p.updateSCI()
}

// ReadPort implements PortDevice.
func (p *ACPIPM) ReadPort(port uint16, data []byte) {
	var reg uint32
	var off, size uint16
	switch {
	case port >= PMTimerPort && port < PMTimerPort+4:
		reg, off, size = PMTimerValue(p.clock.Now()), port-PMTimerPort, 4
	case port >= PM1aEventPort && port < PM1aEventPort+4:
		reg, off, size = uint32(p.sts)|uint32(p.en)<<16, port-PM1aEventPort, 4
	case port >= PM1aControlPort && port < PM1aControlPort+2:
		// SLP_EN and GBL_RLS are write-only and read as 0.
		reg, off, size = uint32(p.cnt|pm1CntSCIEn), port-PM1aControlPort, 2
	default:
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	for i := range data {
		if s := uint(off) + uint(i); s < uint(size) {
			data[i] = uint8(reg >> (8 * s))
		} else {
			data[i] = 0xff
		}
	}
}

// WritePort implements PortDevice.
func (p *ACPIPM) WritePort(port uint16, data []byte) {
	switch {
	case port >= PM1aEventPort && port < PM1aEventPort+4:
		for i, v := range data {
			switch s := uint(port-PM1aEventPort) + uint(i); s {
			case 0, 1:
				p.sts &^= uint16(v) << (8 * s)
			case 2, 3:
				sh := 8 * (s - 2)
				p.en = p.en&^(0xff<<sh) | uint16(v)<<sh
			}
		}
		p.updateSCI()
	case port >= PM1aControlPort && port < PM1aControlPort+2:
		v := p.cnt
		for i, b := range data {
			if s := uint(port-PM1aControlPort) + uint(i); s < 2 {
				v = v&^(0xff<<(8*s)) | uint16(b)<<(8*s)
			}
		}
		p.cnt = v &^ (pm1CntSlpEn | pm1CntGblRls)
		if v&pm1CntSlpEn != 0 && (v&pm1CntSlpTyp)>>pm1CntSlpTypS == SleepTypeS5 && p.power != nil {
			p.power.RequestPowerOff()
		}
	}
	// The timer is read-only.
}

func (p *ACPIPM) updateSCI() {
	high := p.sts&p.en&pm1PwrBtnSts != 0
	if high != p.sciHigh {
		p.sciHigh = high
		if p.irq != nil {
			p.irq.SetIRQ(SCIIRQ, high)
		}
	}
}
