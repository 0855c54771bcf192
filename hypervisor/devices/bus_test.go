package devices

import (
	"strings"
	"testing"
	"time"
)

// manualClock is a Clock the test sets by hand; it counts reads so tests
// can check that a model reads the time only when the guest needs it.
type manualClock struct {
	now   time.Duration
	reads int
}

func (c *manualClock) Now() time.Duration { c.reads++; return c.now }

// lineRecorder is an IRQSink remembering each line's level and every edge.
type lineRecorder struct {
	level map[uint8]bool
	edges []lineEdge
}

type lineEdge struct {
	line uint8
	high bool
}

func (r *lineRecorder) SetIRQ(line uint8, high bool) {
	if r.level == nil {
		r.level = make(map[uint8]bool)
	}
	r.level[line] = high
	r.edges = append(r.edges, lineEdge{line, high})
}

// powerRecorder is a PowerControl counting requests.
type powerRecorder struct{ off, reset int }

func (p *powerRecorder) RequestPowerOff() { p.off++ }
func (p *powerRecorder) RequestReset()    { p.reset++ }

// portLog is a PortDevice recording the ports it was called with.
type portLog struct {
	reads, writes []uint16
	fill          byte
}

func (d *portLog) ReadPort(port uint16, data []byte) {
	d.reads = append(d.reads, port)
	for i := range data {
		data[i] = d.fill
	}
}

func (d *portLog) WritePort(port uint16, data []byte) { d.writes = append(d.writes, port) }

// quietDev is a PortDevice that does nothing, for allocation tests.
type quietDev struct{ last byte }

func (d *quietDev) ReadPort(port uint16, data []byte) { data[0] = d.last }
func (d *quietDev) WritePort(port uint16, data []byte) {
	d.last = data[0]
}

func TestBusRegisterOverlap(t *testing.T) {
	b := NewPortBus()
	if err := b.Register(0x3f8, 8, &portLog{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ base, size uint16 }{
		{0x3f8, 8}, {0x3f0, 9}, {0x3ff, 1}, {0x3fa, 1}, {0x3f0, 0x20},
	} {
		err := b.Register(c.base, c.size, &portLog{})
		if err == nil {
			t.Fatalf("Register(%#x, %d) overlapping 0x3f8-0x3ff: no error", c.base, c.size)
		}
		want := PortRange{c.base, c.size}.String()
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "0x3f8-0x3ff") {
			t.Errorf("error %q should name %s and 0x3f8-0x3ff", err, want)
		}
	}
	// Adjacent ranges on both sides are fine.
	if err := b.Register(0x3f0, 8, &portLog{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x400, 1, &portLog{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0xffff, 1, &portLog{}); err != nil {
		t.Fatalf("last port: %v", err)
	}
	if err := b.Register(0xfff0, 0x11, &portLog{}); err == nil {
		t.Error("range past 0xffff accepted")
	}
	if err := b.Register(0x10, 0, &portLog{}); err == nil {
		t.Error("empty range accepted")
	}
	if err := b.Register(0x10, 1, nil); err == nil {
		t.Error("nil device accepted")
	}
	got := b.Ranges()
	want := []PortRange{{0x3f0, 8}, {0x3f8, 8}, {0x400, 1}, {0xffff, 1}}
	if len(got) != len(want) {
		t.Fatalf("Ranges() = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Ranges() = %v, want %v", got, want)
		}
	}
}

func TestBusRegisterRangesAllOrNothing(t *testing.T) {
	b := NewPortBus()
	if err := b.Register(0x70, 2, &portLog{}); err != nil {
		t.Fatal(err)
	}
	if err := b.RegisterRanges(&portLog{}, PortRange{0x60, 1}, PortRange{0x71, 1}); err == nil {
		t.Fatal("overlap accepted")
	}
	if n := len(b.Ranges()); n != 1 {
		t.Fatalf("failed RegisterRanges left %d ranges, want 1", n)
	}
}

func TestBusDispatchAndUnclaimed(t *testing.T) {
	b := NewPortBus()
	a, c := &portLog{fill: 0xaa}, &portLog{fill: 0xcc}
	if err := b.Register(0x40, 4, a); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x20, 2, c); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	b.Read(0x43, buf)
	if buf[0] != 0xaa || len(a.reads) != 1 || a.reads[0] != 0x43 {
		t.Fatalf("read 0x43: got %#x, device saw %v", buf[0], a.reads)
	}
	b.Write(0x21, []byte{1})
	if len(c.writes) != 1 || c.writes[0] != 0x21 {
		t.Fatalf("write 0x21: device saw %v", c.writes)
	}
	wide := make([]byte, 4)
	b.Read(0x44, wide)
	for _, v := range wide {
		if v != 0xff {
			t.Fatalf("unclaimed read = % x, want ff ff ff ff", wide)
		}
	}
	b.Read(0x44, buf)
	b.Write(0x44, []byte{0})
	b.Write(0x1f, []byte{0})
	un := b.Unclaimed()
	if un[0x44] != 3 || un[0x1f] != 1 || len(un) != 2 {
		t.Fatalf("Unclaimed() = %v", un)
	}
	un[0x44] = 100
	if b.Unclaimed()[0x44] != 3 {
		t.Fatal("Unclaimed() returned the live map")
	}
	if len(a.writes) != 0 || len(c.reads) != 0 {
		t.Fatal("unclaimed access reached a device")
	}
}

func TestBusNoAllocations(t *testing.T) {
	b := NewPortBus()
	for i := uint16(0); i < 40; i++ {
		if err := b.Register(0x100+i*8, 8, &quietDev{}); err != nil {
			t.Fatal(err)
		}
	}
	u := NewUART(COM1Port, &lineRecorder{}, COM1IRQ, discard{})
	if err := b.RegisterRanges(u, u.Ports()...); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	b.Read(0x2, buf[:1]) // the first unclaimed access to a port may grow the map
	allocs := testing.AllocsPerRun(1000, func() {
		b.Read(0x100, buf[:1])
		b.Write(0x1c7, buf[:1])
		b.Read(0x1c7, buf[:2])
		b.Write(COM1Port, buf[:1]) // THR: transmits through the writer
		b.Read(COM1Port+5, buf[:1])
		b.Read(0x2, buf)
		b.Write(0x2, buf)
	})
	if allocs != 0 {
		t.Fatalf("bus access allocates %v times per run", allocs)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestAllModelsShareOneBus(t *testing.T) {
	b := NewPortBus()
	clk := &manualClock{}
	irq := &lineRecorder{}
	pw := &powerRecorder{}
	other := &portLog{} // stands in for the PIC pair, PIT and port 0x61
	for _, r := range []PortRange{{PIC1Port, 2}, {PIC2Port, 2}, {PITPort, 4}, {Port61, 1}} {
		if err := b.Register(r.Base, r.Size, other); err != nil {
			t.Fatal(err)
		}
	}
	u := NewUART(COM1Port, irq, COM1IRQ, discard{})
	rtc := NewRTC(clk, time.Unix(0, 0))
	pm := NewACPIPM(clk, pw, irq)
	lg := NewLegacy(pw)
	for _, d := range []interface {
		PortDevice
		Ports() []PortRange
	}{u, rtc, pm, lg} {
		if err := b.RegisterRanges(d, d.Ports()...); err != nil {
			t.Fatal(err)
		}
	}
	b.Write(I8042StatusPort, []byte{0xfe})
	if pw.reset != 1 {
		t.Fatal("i8042 reset through the bus did not reach PowerControl")
	}
	b.Write(Port61, []byte{0})
	if len(other.writes) != 1 {
		t.Fatal("port 0x61 not routed to its owner")
	}
}
