package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/snapshot"
)

// entryLog is an appender that keeps the entries, and serves them back as
// a receiver's Next does.
type entryLog struct {
	entries [][]byte
	read    int
}

func (l *entryLog) Append(_ context.Context, e []byte) (uint64, error) {
	l.entries = append(l.entries, append([]byte(nil), e...))
	return uint64(len(l.entries)), nil
}

func (l *entryLog) next() (uint64, []byte, error) {
	if l.read == len(l.entries) {
		return 0, nil, io.EOF
	}
	l.read++
	return uint64(l.read), l.entries[l.read-1], nil
}

type zeroClock struct{}

func (zeroClock) Now() time.Duration { return 0 }

// testMachine is a machine state whose device states come from real
// models, so it validates.
func testMachine() vm.MachineState {
	pic := devices.NewPICPair()
	pit := devices.NewPIT(zeroClock{}, pic)
	pit.WritePort(devices.PITPort+3, []byte{0x34})
	var cpu vm.CPUState
	cpu.Regs.RIP, cpu.Regs.RFLAGS = 0x1000, 2
	return vm.MachineState{Exit: 77, CPU: cpu, Devices: vm.DeviceState{
		PIC: pic.State(), PIT: pit.State(), PortB: devices.NewPortB(pit).State(),
		UART:   devices.NewUART(devices.COM1Port, pic, devices.COM1IRQ, io.Discard).State(),
		RTC:    devices.NewRTC(zeroClock{}, time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)).State(),
		PM:     devices.NewACPIPM(zeroClock{}, nil, nil).State(),
		Legacy: devices.NewLegacy(nil).State(),
	}}
}

func testIdentity() snapshot.Identity {
	return snapshot.Identity{MemoryMiB: 16, KernelSHA256: "ab12", Cmdline: "console=ttyS0"}
}

// writeRound writes one round's snapshot as precopy does.
func writeRound(t *testing.T, w *chunkWriter, m *snapshot.Meta, mem []byte, bitmap []uint64, round int, final bool) snapshot.Sum {
	t.Helper()
	sw, err := snapshot.NewWriter(w, m)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind == snapshot.Full {
		err = sw.Memory(mem)
	} else {
		err = sw.Pages(mem, bitmap)
	}
	if err != nil {
		t.Fatal(err)
	}
	sum, err := sw.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.endRound(round, final); err != nil {
		t.Fatal(err)
	}
	return sum
}

// The wire format of a pre-copy: a full round, then a delta of the pages
// written meanwhile (one zeroed), then the final delta; the receiver's
// memory ends as the sender's, and the round-end entries say which round
// was the last.
func TestTransferRoundsRebuildMemory(t *testing.T) {
	id := testIdentity()
	mem := make([]byte, 16<<20)
	for i := range mem[:1<<20] {
		if i/snapshot.PageSize%3 != 0 {
			mem[i] = byte(i * 7)
		}
	}
	log := &entryLog{}
	// Small chunks, so a round spans many entries.
	w := &chunkWriter{ctx: context.Background(), sender: log}
	base := writeRound(t, w, &snapshot.Meta{Kind: snapshot.Full, Identity: id, State: testMachine()}, mem, nil, 1, false)
	bitmap := make([]uint64, 4096/64)
	for _, p := range []int{5, 6, 7, 100} {
		bitmap[p/64] |= 1 << (p % 64)
		mem[p*snapshot.PageSize] ^= 0xff
	}
	clear(mem[100*snapshot.PageSize : 101*snapshot.PageSize])
	base = writeRound(t, w, &snapshot.Meta{Kind: snapshot.Delta, Base: base, Identity: id, State: testMachine()}, mem, bitmap, 2, false)
	clear(bitmap)
	bitmap[0] = 1 << 9
	mem[9*snapshot.PageSize+17] = 42
	writeRound(t, w, &snapshot.Meta{Kind: snapshot.Delta, Base: base, Identity: id, State: testMachine()}, mem, bitmap, 3, true)

	got := make([]byte, len(mem))
	r := &transferReader{next: log.next}
	rounds := 0
	for {
		sr, err := snapshot.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := sr.LoadMemory(got); err != nil {
			t.Fatalf("round %d: %v", rounds+1, err)
		}
		rounds++
		if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("round %d: %d bytes, %v after the snapshot; want the round's end", rounds, n, err)
		}
		if r.round != rounds {
			t.Fatalf("round-end entry says round %d, want %d", r.round, rounds)
		}
		if r.final {
			break
		}
		if err := r.nextRound(); err != nil {
			t.Fatal(err)
		}
	}
	if rounds != 3 || !bytes.Equal(got, mem) {
		t.Fatalf("after %d rounds the memory differs from the sender's", rounds)
	}
	if r.lastSeq != uint64(len(log.entries)) {
		t.Fatalf("stopped at entry %d of %d", r.lastSeq, len(log.entries))
	}
}

// A log entry that is neither a chunk nor a round's end, where the
// transfer is, is refused with its number.
func TestTransferReaderRefusesOtherEntries(t *testing.T) {
	log := &entryLog{entries: [][]byte{{transferChunkTag, 1, 2}, {releasedTag, 0, 0, 0, 0, 0, 0, 0, 1}}}
	r := &transferReader{next: log.next}
	buf := make([]byte, 10)
	if n, err := r.Read(buf); n != 2 || err != nil {
		t.Fatalf("first chunk: %d, %v", n, err)
	}
	_, err := r.Read(buf)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("log entry 2")) {
		t.Fatalf("got %v, want a refusal naming entry 2", err)
	}
}

func TestPageMarksKeepWhatAPeekRead(t *testing.T) {
	fake := &fakeLogs{}
	m := &pageMarks{v: fake}
	fake.next = []uint64{0b101}
	if n, err := m.count(); n != 2 || err != nil {
		t.Fatalf("count: %d, %v", n, err)
	}
	fake.next = []uint64{0b1000}
	got, err := m.take(nil)
	if err != nil || len(got) != 1 || got[0] != 0b1101 {
		t.Fatalf("take: %b, %v; want the peeked pages and the new one", got, err)
	}
	fake.next = []uint64{0}
	if n, _ := m.count(); n != 0 {
		t.Fatalf("after take: %d pages still marked", n)
	}
}

// fakeLogs stands in for a VM's read-and-clear dirty logs.
type fakeLogs struct{ next []uint64 }

func (f *fakeLogs) WrittenPages(into []uint64) ([]uint64, error) {
	if len(into) < len(f.next) {
		into = make([]uint64, len(f.next))
	}
	copy(into, f.next)
	f.next = make([]uint64, len(f.next))
	return into, nil
}

// FuzzTransferReader: whatever entries arrive where a transfer belongs,
// reading rounds of snapshots from them ends in an error or a verified
// snapshot, never a panic or a read beyond what the entries hold.
func FuzzTransferReader(f *testing.F) {
	id := testIdentity()
	mem := make([]byte, 16<<20)
	mem[4096] = 1
	log := &entryLog{}
	w := &chunkWriter{ctx: context.Background(), sender: log}
	sw, _ := snapshot.NewWriter(w, &snapshot.Meta{Kind: snapshot.Full, Identity: id, State: testMachine()})
	sw.Memory(mem)
	sw.Close()
	w.endRound(1, true)
	var seed []byte
	for _, e := range log.entries {
		seed = binary.BigEndian.AppendUint32(seed, uint32(len(e)))
		seed = append(seed, e...)
	}
	f.Add(seed)
	f.Add([]byte{0, 0, 0, 6, transferRoundTag, 1, 0, 0, 0, 1})
	got := make([]byte, 16<<20)
	f.Fuzz(func(t *testing.T, data []byte) {
		var entries [][]byte
		for len(data) >= 4 {
			n := int(binary.BigEndian.Uint32(data))
			data = data[4:]
			if n > len(data) {
				n = len(data)
			}
			entries = append(entries, data[:n])
			data = data[n:]
		}
		r := &transferReader{next: (&entryLog{entries: entries}).next}
		for range 4 {
			sr, err := snapshot.NewReader(r)
			if err != nil {
				return
			}
			if err := sr.LoadMemory(got); err != nil {
				return
			}
			if _, err := r.Read(make([]byte, 1)); !errors.Is(err, io.EOF) || r.final {
				return
			}
			if r.nextRound() != nil {
				return
			}
		}
	})
}

// A throttle stops: its goroutine ends once stop returns (stop once
// waited forever for a goroutine that read the cleared quit field).
func TestThrottleStops(t *testing.T) {
	thr := &throttle{atExit: func(ctx context.Context, fn func() error) error { return fn() }}
	thr.raise()
	thr.raise()
	if got := thr.share(); got != throttleSteps[1] {
		t.Fatalf("after two raises the share is %v, want %v", got, throttleSteps[1])
	}
	stopped := make(chan struct{})
	go func() { thr.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return")
	}
	if thr.share() != 0 {
		t.Fatal("a stopped throttle still has a share")
	}
	thr.stop() // twice is harmless
}
