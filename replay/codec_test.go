package replay

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
)

func filled(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func hash32(b byte) (h [32]byte) {
	for i := range h {
		h[i] = b + byte(i)
	}
	return h
}

// edgeEvents has every type with edge values, in non-decreasing exit order.
func edgeEvents() []Event {
	return []Event{
		NewExitMark(0, 0, 0),
		NewExitMark(0, 255, math.MaxUint64),
		NewExitMark(1, 2, 0xffffffff81000000),
		NewExitMark(1, 6, 0), // RIP delta crossing the whole space
		NewClockRead(1, 0),
		NewClockRead(1, math.MaxInt64),
		NewClockRead(2, 0), // delta -MaxInt64
		NewTimerFired(2, 0, 1),
		NewTimerFired(2, 255, math.MaxInt64),
		NewInterruptInjected(3, 0),
		NewInterruptInjected(3, 255),
		NewConsoleInput(3, []byte{0}),
		NewConsoleInput(3, filled(MaxConsoleInput, 0xff)),
		NewFrameReceived(4, 0, []byte{1}),
		NewFrameReceived(4, 255, filled(MaxFrame, 0xaa)),
		NewDiskRead(5, 0, 0, []byte{2}),
		NewDiskRead(5, 255, math.MaxInt64-MaxDiskRead, filled(MaxDiskRead, 0x55)),
		NewDiskDone(5, 0, 0),
		NewDiskDone(5, 255, 255),
		NewKick(6),
		NewStateDigest(6, [32]byte{}, [32]byte{}),
		NewStateDigest(6, hash32(1), hash32(0xf0)),
		NewOutput(7, OutputFrame, 0, [32]byte{}),
		NewOutput(7, OutputDiskWrite, 255, hash32(9)),
		NewCheckpointCPU(8, []byte{1}),
		NewCheckpointCPU(8, filled(MaxCPUState, 0x11)),
		NewCheckpointPage(8, 0, filled(PageSize, 0x22)),
		NewCheckpointPage(8, math.MaxInt64/PageSize*PageSize, filled(PageSize, 0x33)),
		NewCheckpointPage(8, PageSize, make([]byte, PageSize)), // a zero page
		NewCheckpointChunk(8, []byte{1}),                       // opaque to the codec
		NewCheckpointChunk(8, filled(MaxCheckpointChunk, 0x44)),
		NewKick(1 << 40),
		NewExitMark(math.MaxUint64, 1, 1),
		NewKick(math.MaxUint64),
	}
}

func encodeAll(t testing.TB, evs []Event) []byte {
	t.Helper()
	var e Encoder
	e.Begin(nil)
	for i := range evs {
		if err := e.Append(&evs[i]); err != nil {
			t.Fatalf("append %v: %v", evs[i].String(), err)
		}
	}
	return e.Bytes()
}

func TestRoundTripEveryType(t *testing.T) {
	evs := edgeEvents()
	seen := map[Type]bool{}
	for _, ev := range evs {
		seen[ev.Type] = true
	}
	for ty := Type(1); ty <= maxType; ty++ {
		if !seen[ty] {
			t.Errorf("edgeEvents lacks %v", ty)
		}
	}
	batch := encodeAll(t, evs)
	got, err := DecodeBatch(batch)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, evs) {
		for i := range min(len(got), len(evs)) {
			if !reflect.DeepEqual(got[i], evs[i]) {
				t.Fatalf("event %d: got %v, want %v", i, got[i].String(), evs[i].String())
			}
		}
		t.Fatalf("got %d events, want %d", len(got), len(evs))
	}
	// Each alone, too: every type's first-in-batch encoding (deltas
	// against zero).
	for _, ev := range evs {
		b := encodeAll(t, []Event{ev})
		got, err := DecodeBatch(b)
		if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], ev) {
			t.Errorf("%v alone: got %v, %v", ev.String(), got, err)
		}
	}
}

// TestEncodingPinned pins the wire format with a batch computed by hand
// (see the comments) instead of by the encoder.
func TestEncodingPinned(t *testing.T) {
	evs := []Event{
		NewExitMark(5, 2, 0xffffffff81000010), // 01 | 05 | 02 | zigzag(-0x7efffff0)=0xfdffffdf: df ff ff ef 0f
		NewClockRead(5, 1_000_000),            // 02 | 00 | zigzag(1e6)=2e6: 80 89 7a
		NewTimerFired(5, 0, 1_000_500),        // 03 | 00 | 00 | zigzag(500)=1000: e8 07
		NewInterruptInjected(5, 0x20),         // 04 | 00 | 20
		NewExitMark(7, 5, 0xffffffff81000020), // 01 | 02 | 05 | zigzag(16)=32: 20
		NewConsoleInput(7, []byte("hi")),      // 05 | 00 | 02 68 69
		NewKick(9),                            // 09 | 02
		NewClockRead(9, 999_000),              // 02 | 00 | zigzag(-1500)=2999: b7 17
		NewDiskDone(9, 1, 0),                  // 08 | 00 | 01 00
	}
	want := "02" +
		"01 05 02 df ff ff ef 0f" +
		"02 00 80 89 7a" +
		"03 00 00 e8 07" +
		"04 00 20" +
		"01 02 05 20" +
		"05 00 02 68 69" +
		"09 02" +
		"02 00 b7 17" +
		"08 00 01 00"
	wantBytes, err := hex.DecodeString(strings.ReplaceAll(want, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	got := encodeAll(t, evs)
	if !bytes.Equal(got, wantBytes) {
		t.Fatalf("encoding\n got % x\nwant % x", got, wantBytes)
	}
	dec, err := DecodeBatch(wantBytes)
	if err != nil || !reflect.DeepEqual(dec, evs) {
		t.Fatalf("decode: %v %v", dec, err)
	}
}

func TestEncoderRefuses(t *testing.T) {
	bad := []struct {
		ev   Event
		want string
	}{
		{Event{Type: 0}, "unknown event type 0"},
		{Event{Type: 16}, "unknown event type 16"},
		{Event{Type: CheckpointChunk}, "empty payload"},
		{NewCheckpointChunk(1, make([]byte, MaxCheckpointChunk+1)), "exceeds"},
		{Event{Type: CheckpointPage, Value: 1, Data: filled(PageSize, 1)}, "not page aligned"},
		{Event{Type: CheckpointPage, Data: filled(100, 1)}, "a page is 4096"},
		{Event{Type: Kick, Exit: 1, RIP: 1}, "does not use"},
		{Event{Type: ClockRead, Data: []byte{}}, "does not use"},
		{Event{Type: ExitMark, Hash: hash32(1)}, "does not use"},
		{Event{Type: InterruptInjected, Regs: hash32(1)}, "does not use"},
		{NewClockRead(1, -1), "negative"},
		{NewTimerFired(1, 0, math.MinInt64), "negative"},
		{NewDiskRead(1, 0, -512, []byte{1}), "negative"},
		{NewDiskRead(1, 0, math.MaxInt64, []byte{1}), "overflows"},
		{NewConsoleInput(1, nil), "empty"},
		{NewConsoleInput(1, make([]byte, MaxConsoleInput+1)), "exceeds"},
		{NewFrameReceived(1, 0, make([]byte, MaxFrame+1)), "exceeds"},
		{NewDiskRead(1, 0, 0, make([]byte, MaxDiskRead+1)), "exceeds"},
		{NewOutput(1, 3, 0, [32]byte{}), "output kind"},
	}
	for _, c := range bad {
		var e Encoder
		e.Begin(nil)
		err := e.Append(&c.ev)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want %q", c.ev.Type, err, c.want)
		}
		if e.Len() != 1 {
			t.Errorf("%v: refused event left %d bytes", c.ev.Type, e.Len())
		}
	}

	var e Encoder
	if err := e.Append(&Event{Type: Kick}); err == nil {
		t.Error("Append before Begin accepted")
	}
	e.Begin(nil)
	ev := NewKick(10)
	if err := e.Append(&ev); err != nil {
		t.Fatal(err)
	}
	ev = NewKick(9)
	err := e.Append(&ev)
	if err == nil || !strings.Contains(err.Error(), "exit 9 after an event at exit 10") {
		t.Errorf("backwards exit: %v", err)
	}
	// The ordering check spans batches.
	e.Begin(nil)
	if err := e.Append(&ev); err == nil {
		t.Error("a batch starting below the previous batch's last exit was accepted")
	}
}

func TestDecoderErrors(t *testing.T) {
	cases := []struct {
		name, hex, want string
	}{
		{"empty", "", "offset 0: empty batch"},
		{"version", "03", "offset 0: batch version 3"},
		{"unknown type", "02 0900 1000", "offset 3: unknown event type 16"},
		{"type zero", "02 00", "offset 1: unknown event type 0"},
		{"truncated exit", "02 09", "Kick entry truncated in its exit delta"},
		{"truncated varint", "02 0980", "offset 3: Kick entry truncated"},
		{"truncated mark", "02 0100", "ExitMark entry truncated in its exit kind"},
		{"truncated digest", "02 0a00" + strings.Repeat("00", 40), "StateDigest entry truncated in its memory digest"},
		{"truncated payload", "02 0500 0341", "ConsoleInput entry truncated in its payload"},
		{"non-minimal", "02 09 8000", "offset 2: Kick exit delta is not minimally encoded"},
		{"overflow varint", "02 09 ffffffffffffffffff02", "overflows 64 bits"},
		{"exit wraps", "02 09 ffffffffffffffffff01 09 01", "offset 12: Kick at exit 0 after an event at exit 18446744073709551615"},
		{"empty payload", "02 0500 00", "ConsoleInput payload length 0 outside 1..4096"},
		{"frame too long", "02 0600 00 818004", "FrameReceived payload length 65537 outside 1..65536"},
		{"disk read too long", "02 0700 00 00 818040", "DiskRead payload length 1048577"},
		{"huge length", "02 0500 ffffffffffffffff7f", "payload length 9223372036854775807"},
		{"negative time", "02 0200 03", "offset 1: ClockRead at exit 0: negative value -2"},
		{"offset above int64", "02 0700 00 80808080808080808001 01 00", "negative value"},
		{"output kind", "02 0b00 0000" + strings.Repeat("00", 32), "unknown output kind 0"},
	}
	for _, c := range cases {
		b, err := hex.DecodeString(strings.ReplaceAll(c.hex, " ", ""))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		_, err = DecodeBatch(b)
		var fe *FormatError
		if err == nil || !errors.As(err, &fe) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want a FormatError containing %q", c.name, err, c.want)
		}
	}
}

func TestDecoderTruncationEverywhere(t *testing.T) {
	// Small payloads only, so the quadratic loop stays fast.
	var evs []Event
	for _, ev := range edgeEvents() {
		if len(ev.Data) <= 64 {
			evs = append(evs, ev)
		}
	}
	batch := encodeAll(t, evs)
	// Every proper prefix that ends inside an entry must fail; prefixes at
	// entry boundaries decode to a prefix of evs.
	bounds := map[int]int{1: 0}
	var e Encoder
	e.Begin(nil)
	for i := range evs {
		if err := e.Append(&evs[i]); err != nil {
			t.Fatal(err)
		}
		bounds[e.Len()] = i + 1
	}
	for n := 1; n < len(batch); n++ {
		got, err := DecodeBatch(batch[:n])
		if k, ok := bounds[n]; ok {
			if err != nil || len(got) != k {
				t.Fatalf("prefix %d (boundary after %d events): %d events, %v", n, k, len(got), err)
			}
		} else if err == nil {
			t.Fatalf("prefix %d inside an entry decoded without error", n)
		}
	}
}

func TestDecoderOrderingAcrossBatches(t *testing.T) {
	b1 := encodeAll(t, []Event{NewKick(100)})
	b2 := encodeAll(t, []Event{NewKick(99)})
	var d Decoder
	var ev Event
	if err := d.Reset(b1); err != nil {
		t.Fatal(err)
	}
	if err := d.Next(&ev); err != nil {
		t.Fatal(err)
	}
	if err := d.Next(&ev); err != io.EOF {
		t.Fatalf("end of batch: %v", err)
	}
	if err := d.Reset(b2); err != nil {
		t.Fatal(err)
	}
	err := d.Next(&ev)
	if err == nil || !strings.Contains(err.Error(), "exit 99 after an event at exit 100") {
		t.Fatalf("got %v", err)
	}
	if again := d.Next(&ev); again != err {
		t.Fatalf("error not sticky: %v", again)
	}
}

func TestEncoderNoAllocs(t *testing.T) {
	frame := make([]byte, 1500)
	evs := []Event{
		NewExitMark(1, 2, 0xffffffff81000000),
		NewClockRead(1, 123456789),
		NewTimerFired(1, 0, 123456999),
		NewInterruptInjected(1, 0x20),
		NewFrameReceived(1, 0, frame),
		NewStateDigest(1, hash32(1), hash32(2)),
	}
	var e Encoder
	buf := make([]byte, 0, 64<<10)
	var exit uint64
	allocs := testing.AllocsPerRun(100, func() {
		e.Begin(buf)
		for i := range evs {
			exit++
			evs[i].Exit = exit
			if err := e.Append(&evs[i]); err != nil {
				t.Fatal(err)
			}
		}
		buf = e.Bytes()
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per batch, want 0", allocs)
	}
	var d Decoder
	var ev Event
	allocs = testing.AllocsPerRun(100, func() {
		_ = d.Reset(buf)
		d.last, d.any = 0, false
		for d.Next(&ev) == nil {
		}
	})
	if allocs != 0 {
		t.Errorf("decoding: %.1f allocations per batch, want 0", allocs)
	}
}

// TestIdleBandwidth estimates the log rate of an idle Linux guest to keep
// the entry sizes honest against VMware FT's 0.5-1.5 Mbit/s: a 1000 Hz
// tick, each tick an HLT exit woken by the PIT, the injection, the PIC
// EOI and a few PM timer reads.
func TestIdleBandwidth(t *testing.T) {
	var e Encoder
	e.Begin(nil)
	var exit uint64
	now := int64(5e9)
	rip := uint64(0xffffffff81a00000)
	add := func(ev Event) {
		if err := e.Append(&ev); err != nil {
			t.Fatal(err)
		}
	}
	for tick := 0; tick < 1000; tick++ {
		now += 1_000_000
		exit++ // HLT
		add(NewExitMark(exit, 5, rip+0x1234))
		add(NewTimerFired(exit, 0, now+3_000))
		add(NewInterruptInjected(exit, 0x20))
		for range 3 { // PM timer reads in the tick handler
			exit++
			now += 2_000
			add(NewExitMark(exit, 2, rip+0x5678))
			add(NewClockRead(exit, now))
		}
		exit += 2 // PIC EOI writes: no events
	}
	mbit := float64(e.Len()*8) / 1e6
	t.Logf("idle guest, 1 s at 1000 Hz: %d bytes = %.2f Mbit/s (%.1f bytes/tick)", e.Len(), mbit, float64(e.Len())/1000)
	if mbit > 0.5 {
		t.Errorf("idle log rate %.2f Mbit/s, want well under VMware's 0.5-1.5", mbit)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{Version})
	f.Add(encodeAll(f, edgeEvents()[:12]))
	f.Add(encodeAll(f, []Event{NewExitMark(5, 2, 0xffffffff81000010), NewClockRead(5, 1e6), NewKick(9)}))
	f.Add(encodeAll(f, []Event{NewDiskRead(3, 1, 4096, []byte("data")), NewDiskDone(3, 1, 0), NewOutput(4, OutputDiskWrite, 1, hash32(3))}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Decoder
		if d.Reset(b) != nil {
			return
		}
		var e Encoder
		e.Begin(make([]byte, 0, len(b)))
		n := 1
		for {
			var ev Event
			err := d.Next(&ev)
			if err == io.EOF {
				break
			}
			if err != nil {
				// What was accepted before the error re-encodes to
				// the bytes it came from.
				if !bytes.Equal(e.Bytes(), b[:n]) {
					t.Fatalf("accepted prefix re-encodes differently:\n got % x\nwant % x", e.Bytes(), b[:n])
				}
				return
			}
			if len(ev.Data) > MaxDiskRead {
				t.Fatalf("payload of %d bytes", len(ev.Data))
			}
			if err := e.Append(&ev); err != nil {
				t.Fatalf("decoded event %v does not re-encode: %v", ev.String(), err)
			}
			n = d.off
		}
		if !bytes.Equal(e.Bytes(), b) {
			t.Fatalf("re-encoding differs:\n got % x\nwant % x", e.Bytes(), b)
		}
	})
}
