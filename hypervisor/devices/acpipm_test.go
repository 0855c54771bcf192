package devices

import (
	"math"
	"math/big"
	"testing"
	"time"
)

// pmTimerBig is the spec's definition evaluated with unbounded integers.
func pmTimerBig(now time.Duration) uint32 {
	v := new(big.Int).Mul(big.NewInt(int64(now)), big.NewInt(PMTimerHz))
	v.Quo(v, big.NewInt(int64(time.Second)))
	v.Mod(v, big.NewInt(1<<24))
	return uint32(v.Int64())
}

func TestPMTimerValue(t *testing.T) {
	for _, c := range []struct {
		now  time.Duration
		want uint32
	}{
		{0, 0},
		{279, 0}, // 0.9987 ticks
		{280, 1}, // 1.0023 ticks
		{time.Second, 3579545},
		{4 * time.Second, 14318180},
		// 2^24 ticks is 4.6870 s: the counter wraps.
		{5 * time.Second, 5*3579545 - 1<<24},
		{time.Duration(1<<24) * time.Second / PMTimerHz, 1<<24 - 1},
		{time.Duration(1<<24)*time.Second/PMTimerHz + 1, 0},
		{100 * 24 * time.Hour, pmTimerBig(100 * 24 * time.Hour)},
		{math.MaxInt64, pmTimerBig(math.MaxInt64)},
		{-time.Second, 0},
	} {
		if got := PMTimerValue(c.now); got != c.want {
			t.Errorf("PMTimerValue(%v) = %d, want %d", c.now, got, c.want)
		}
	}
	// Exactness over days of VM time, far past where float64 would drift.
	for ns := int64(1); ns < math.MaxInt64/3; ns = ns*3 + 7 {
		if got, want := PMTimerValue(time.Duration(ns)), pmTimerBig(time.Duration(ns)); got != want {
			t.Fatalf("PMTimerValue(%d ns) = %d, want %d", ns, got, want)
		}
	}
}

func TestPMTimerPort(t *testing.T) {
	clk := &manualClock{now: time.Second}
	pm := NewACPIPM(clk, &powerRecorder{}, nil)
	var b [4]byte
	pm.ReadPort(PMTimerPort, b[:])
	if got := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24; got != 3579545 {
		t.Fatalf("32-bit read = %d, want 3579545", got)
	}
	if clk.reads != 1 {
		t.Fatalf("a 4-byte timer read read the clock %d times", clk.reads)
	}
	pm.ReadPort(PMTimerPort+2, b[:1])
	if b[0] != uint8(3579545>>16) {
		t.Fatalf("byte 2 = %#x", b[0])
	}
	pm.ReadPort(PMTimerPort+3, b[:1])
	if b[0] != 0 {
		t.Fatalf("bits 24-31 = %#x, want 0 (24-bit timer)", b[0])
	}
	pm.WritePort(PMTimerPort, []byte{1, 2, 3, 4})
	pm.ReadPort(PM1aEventPort, b[:])
	pm.ReadPort(PM1aControlPort, b[:2])
	pm.WritePort(PM1aControlPort, []byte{0, 0})
	if clk.reads != 3 {
		t.Fatalf("clock read %d times; only the two timer reads may read it", clk.reads)
	}
}

func pmControl(pm *ACPIPM, v uint16) { pm.WritePort(PM1aControlPort, []byte{uint8(v), uint8(v >> 8)}) }

func TestPMSleepS5(t *testing.T) {
	pw := &powerRecorder{}
	pm := NewACPIPM(&manualClock{}, pw, nil)
	var b [2]byte
	pm.ReadPort(PM1aControlPort, b[:])
	if b[0]&1 == 0 {
		t.Fatal("SCI_EN reads 0; ACPI must always be enabled")
	}
	// Linux's acpi_hw_legacy_sleep: write SLP_TYP, then SLP_TYP|SLP_EN.
	pmControl(pm, SleepTypeS5<<10)
	if pw.off != 0 {
		t.Fatal("SLP_TYP without SLP_EN powered off")
	}
	pm.ReadPort(PM1aControlPort, b[:])
	if got := uint16(b[0]) | uint16(b[1])<<8; got != SleepTypeS5<<10|1 {
		t.Fatalf("PM1_CNT = %#x, want SLP_TYP kept and SCI_EN", got)
	}
	pmControl(pm, SleepTypeS5<<10|1<<13)
	if pw.off != 1 || pw.reset != 0 {
		t.Fatalf("S5 sleep: %+v, want one power-off", *pw)
	}
	pm.ReadPort(PM1aControlPort, b[:])
	if b[1]&(1<<5) != 0 {
		t.Fatal("SLP_EN reads back 1")
	}
	for typ := uint16(0); typ < 8; typ++ {
		if typ == SleepTypeS5 {
			continue
		}
		pmControl(pm, typ<<10|1<<13)
	}
	if pw.off != 1 {
		t.Fatalf("other sleep types powered off (%d requests)", pw.off)
	}
	// A byte write to the high half carries both SLP_TYP and SLP_EN.
	pm.WritePort(PM1aControlPort+1, []byte{SleepTypeS5<<2 | 1<<5})
	if pw.off != 2 {
		t.Fatal("byte write of SLP_TYP|SLP_EN did not power off")
	}
}

func TestPMPowerButtonSCI(t *testing.T) {
	irq := &lineRecorder{}
	pm := NewACPIPM(&manualClock{}, &powerRecorder{}, irq)
	pm.PressPowerButton()
	if irq.level[SCIIRQ] {
		t.Fatal("SCI raised while PWRBTN_EN is clear")
	}
	var b [4]byte
	pm.ReadPort(PM1aEventPort, b[:])
	if b[1] != 0x01 {
		t.Fatalf("PM1_STS high byte = %#x, want PWRBTN_STS", b[1])
	}
	pm.WritePort(PM1aEventPort+2, []byte{0x00, 0x01}) // PWRBTN_EN
	if !irq.level[SCIIRQ] {
		t.Fatal("SCI not raised with PWRBTN_STS and PWRBTN_EN")
	}
	pm.WritePort(PM1aEventPort, []byte{0xff, 0x00}) // W1C of other bits
	if !irq.level[SCIIRQ] {
		t.Fatal("clearing other status bits dropped the SCI")
	}
	pm.WritePort(PM1aEventPort, []byte{0x00, 0x01})
	if irq.level[SCIIRQ] {
		t.Fatal("SCI still high after PWRBTN_STS was cleared")
	}
	pm.ReadPort(PM1aEventPort, b[:])
	if b != [4]byte{0, 0, 0, 1} {
		t.Fatalf("PM1 event block = % x, want 00 00 00 01", b)
	}
	pm.WritePort(PM1aEventPort, []byte{0, 0, 0x21, 0}) // 32-bit write: TMR_EN, GBL_EN
	pm.ReadPort(PM1aEventPort+2, b[:2])
	if b[0] != 0x21 || b[1] != 0 {
		t.Fatalf("PM1_EN = % x after a 32-bit write", b[:2])
	}
}

func TestPMReset(t *testing.T) {
	irq := &lineRecorder{}
	pm := NewACPIPM(&manualClock{}, nil, irq)
	pm.WritePort(PM1aEventPort+3, []byte{0x01})
	pm.PressPowerButton()
	pmControl(pm, SleepTypeS5<<10|1<<13) // nil PowerControl: no panic
	pm.Reset()
	if irq.level[SCIIRQ] {
		t.Fatal("SCI high after reset")
	}
	var b [4]byte
	pm.ReadPort(PM1aEventPort, b[:])
	if b != [4]byte{} {
		t.Fatalf("PM1 event block after reset = % x", b)
	}
	pm.ReadPort(PM1aControlPort, b[:4])
	if b != [4]byte{1, 0, 0xff, 0xff} {
		t.Fatalf("PM1 control read = % x, want SCI_EN then open bus", b)
	}
}
