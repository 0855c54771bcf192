package replay

import (
	"bytes"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

// fuzzOutput is what the driven backup's devices output, so a log whose
// Output hashes it (the recorded seed's) gets past the comparison.
var fuzzOutput = []byte("output")

// driveBackup drives r as hypervisor/vm's loop drives a Replayer, for a
// backup whose devices do whatever the log says the primary's did: at each
// logged exit the handler's clock reads, disk reads and outputs, then the
// exit check, the inputs (with the digests and checkpoints among them), the
// injection, and whatever the log holds at the exit after it. It returns
// how the replay stopped (vm.ErrLogEnd at the end of a log it accepted
// whole) and fails t if an exit takes no entry off the log.
func driveBackup(t *testing.T, r *Replayer, g vm.GuestState, maxSteps int) error {
	for range maxSteps {
		ev := r.peek()
		if ev == nil {
			if r.err != nil {
				return r.err
			}
			return vm.ErrLogEnd
		}
		n := ev.Exit
		consumed := r.recentNext
		if err := driveExit(r, n, g); err != nil {
			return err
		}
		if r.recentNext == consumed && r.mark == nil {
			if ev := r.peek(); ev != nil && ev.Exit == n {
				t.Fatalf("exit #%d took no entry off the log; next is %s", n, ev.String())
			}
		}
	}
	t.Fatalf("the log was not used up in %d exits", maxSteps)
	return nil
}

func driveExit(r *Replayer, n uint64, g vm.GuestState) error {
	r.skipMark(n)
handler:
	for ev := r.peek(); ev != nil && ev.Exit == n; ev = r.peek() {
		var err error
		switch ev.Type {
		case ClockRead:
			_, err = r.ClockRead(n)
		case DiskRead:
			err = r.DiskRead(n, int(ev.Device), ev.Value, make([]byte, len(ev.Data)))
		case DiskDone:
			if err = r.DiskRead(n, int(ev.Device), 0, make([]byte, 512)); errors.Is(err, vm.ErrPrimaryReadFailed) {
				err = nil
			}
		case Output:
			err = r.Output(n, vm.OutputKind(ev.Kind), int(ev.Device), 0, fuzzOutput)
		default:
			break handler
		}
		if err != nil {
			return err
		}
	}
	kind, rip := kvm.ExitIO, uint64(0)
	if m := r.mark; m != nil {
		kind, rip = kvm.ExitKind(m.Kind), m.RIP
	}
	if err := r.Exit(n, kind, 0, func() uint64 { return rip }); err != nil {
		return err
	}
	for {
		for {
			_, ok, err := r.Next(n, g)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
		}
		if ev := r.peek(); ev != nil && ev.Exit == n && ev.Type == InterruptInjected {
			if err := r.Injected(n, ev.Kind); err != nil {
				return err
			}
		}
		more, err := r.MoreAt(n)
		if err != nil || !more {
			return err
		}
	}
}

// streamOf serves batches one by one, then io.EOF: a log channel.
func streamOf(batches ...[]byte) func() ([]byte, error) {
	return func() ([]byte, error) {
		if len(batches) == 0 {
			return nil, io.EOF
		}
		b := batches[0]
		batches = batches[1:]
		return b, nil
	}
}

// recordedLog is a primary's log, recorded by a Recorder on a 4-page
// memGuest, in two batches: exit 1 reads the clock, fires a timer and
// injects; exit 2 logs a digest, is kicked and ships a checkpoint of pages
// 0, 1 (zero) and 3 (the top of memory) and the vCPU; exit 3 reads the disk,
// outputs fuzzOutput and receives console bytes and a frame; exit 4 logs a
// digest of the loaded state.
func recordedLog(t testing.TB) (first, second []byte) {
	t.Helper()
	var batches [][]byte
	rec := NewRecorder(func(b []byte) error {
		batches = append(batches, bytes.Clone(b))
		return nil
	}, RecorderOptions{MarkEvery: 1, DigestEvery: 2, DigestInterval: -1, BatchBytes: 1 << 20})
	p := newMemGuest(4)
	rip := func() uint64 { return p.cpu.Regs.RIP }
	check := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	rec.ClockRead(1, 1000)
	rec.Exit(1, kvm.ExitIO, 0x40, rip)
	rec.TimerFired(1, 0, 1500)
	check(rec.BeforeRun(1, p))
	rec.Injected(1, 0x20)
	rec.Exit(2, kvm.ExitMMIO, 0xd0000050, rip)
	check(rec.BeforeRun(2, p))
	copy(p.mem, "page zero")
	copy(p.mem[3*PageSize:], "top page")
	p.cpu.Regs.RIP = 0x1234
	for _, page := range []int{0, 1, 3} {
		p.markPage(page)
	}
	check(rec.Kicked(2, p))
	rec.Flush()
	rec.DiskRead(3, 0, 4096, []byte("sector"))
	rec.Output(3, vm.OutputFrame, 0, 0, fuzzOutput)
	rec.Exit(3, kvm.ExitIO, 0x3f8, rip)
	rec.ConsoleInput(3, []byte("ls\n"))
	rec.FrameReceived(3, 0, bytes.Repeat([]byte{0xee}, 60))
	check(rec.BeforeRun(3, p))
	rec.Exit(4, kvm.ExitHLT, 0, rip)
	check(rec.BeforeRun(4, p))
	check(rec.Close())
	if len(batches) != 2 {
		t.Fatalf("recorded %d batches, want 2", len(batches))
	}
	return batches[0], batches[1]
}

// The driver is not vacuous: a recorded log goes through every phase, its
// digests match and its checkpoint loads.
func TestDriveBackupThroughRecordedLog(t *testing.T) {
	first, second := recordedLog(t)
	r := NewStreamReplayer(streamOf(first, second))
	g := newMemGuest(4)
	if err := driveBackup(t, r, g, 100); !errors.Is(err, vm.ErrLogEnd) {
		t.Fatalf("replay of the recorded log: %v", err)
	}
	st := r.Stats()
	if st.Digests != 2 || st.Checkpoints != 1 || st.CheckpointPages != 3 || st.Outputs != 1 {
		t.Fatalf("stats %+v, want 2 digests, 1 checkpoint of 3 pages, 1 output", st)
	}
	if g.cpu.Regs.RIP != 0x1234 || string(g.mem[3*PageSize:3*PageSize+8]) != "top page" {
		t.Fatalf("checkpoint not loaded: RIP %#x", g.cpu.Regs.RIP)
	}
}

// FuzzReplayer drives arbitrary batches (two, as a log channel hands them
// over) through a backup's Replayer against a guest memory of 1-16 pages.
// It never panics or stalls, and when it accepts a log whole, the log's
// checkpoints loaded exactly: every page at its address, every Kick one
// checkpoint.
func FuzzReplayer(f *testing.F) {
	first, second := recordedLog(f)
	f.Add(uint8(4), first, second)
	f.Add(uint8(4), append(bytes.Clone(first), second[1:]...), []byte{}) // wrong deltas
	// Checkpoint pages and zero pages at the top of memory (they load) and
	// beyond it, up to near the end of the address space (refused). The
	// largest page number the format carries is not among them: the fuzzer
	// is to find what is beside these. The zero pages come in a batch of
	// their own after the vCPU state, as a stream may hand them over: a
	// few bytes for the fuzzer to mutate rather than a whole page.
	page := filled(PageSize, 0x5a)
	head := encodeAll(f, checkpointHead(f))
	for _, addr := range []int64{3 * PageSize, 4 * PageSize, 1 << 40, math.MaxInt64/PageSize*PageSize - PageSize} {
		f.Add(uint8(4), checkpointLog(f, NewCheckpointPage(3, addr, page)), []byte{})
		f.Add(uint8(4), head, encodeAll(f, []Event{NewCheckpointPage(3, addr, make([]byte, PageSize)), NewExitMark(4, 2, 0x2000)}))
	}
	// Page chunks: content, a zero page and a hashed page the backup holds
	// (its memory starts zeroed) load; a hashed page it does not hold
	// stops it.
	zeroHash := HashPage(make([]byte, PageSize))
	f.Add(uint8(4), checkpointLog(f, NewCheckpointChunk(3, encodeChunk(f, []chunkInput{
		{ChunkPage{Page: 0, Kind: PageHashed, Hash: zeroHash}, nil},
		{ChunkPage{Page: 1, Kind: PageContent}, page},
		{ChunkPage{Page: 3, Kind: PageZero}, nil},
	}))), []byte{})
	f.Add(uint8(4), head, encodeAll(f, []Event{NewCheckpointChunk(3, encodeChunk(f, []chunkInput{
		{ChunkPage{Page: 2, Kind: PageHashed, Hash: HashPage(page)}, nil},
	})), NewExitMark(4, 2, 0x2000)}))
	f.Fuzz(replayChecked)
}

// FuzzCheckpointPages sends a backup a checkpoint of two pages (or zero
// pages) at any page numbers the log format carries, against a guest
// memory of 1-16 pages. The page numbers are integers to the fuzzer, which
// walks them in small steps: from the seeds beside the ends of memory and
// of the address space it reaches every boundary in between.
func FuzzCheckpointPages(f *testing.F) {
	const maxPage = math.MaxInt64 / PageSize
	f.Add(uint8(4), uint64(3), false, uint64(0), true)
	f.Add(uint8(4), uint64(4), true, uint64(2), false)
	f.Add(uint8(15), uint64(maxPage-100), false, uint64(15), true)
	f.Add(uint8(0), uint64(1), true, uint64(maxPage+100), false)
	f.Fuzz(func(t *testing.T, memPages uint8, page1 uint64, zero1 bool, page2 uint64, zero2 bool) {
		evs := checkpointHead(t)
		for _, p := range [...]struct {
			n    uint64
			zero bool
		}{{page1, zero1}, {page2, zero2}} {
			if p.n > maxPage {
				return // beyond the format: the decoder refuses it (FuzzDecode)
			}
			data := filled(PageSize, byte(p.n)|1)
			if p.zero {
				data = make([]byte, PageSize)
			}
			evs = append(evs, NewCheckpointPage(3, int64(p.n)*PageSize, data))
		}
		evs = append(evs, NewExitMark(4, 2, 0x2000))
		replayChecked(t, memPages, encodeAll(t, evs), nil)
	})
}

// replayChecked replays the batches first and second on a backup with a
// memory of 1+memPages%16 pages. It never panics or stalls, and when it
// accepts the log whole, the log's checkpoints loaded exactly: every page
// at its address, every Kick one checkpoint.
func replayChecked(t *testing.T, memPages uint8, first, second []byte) {
	// An empty second batch stands for none (a log channel does not hand
	// over empty batches; the decoder refuses them).
	batches := [][]byte{first}
	if len(second) > 0 {
		batches = append(batches, second)
	}
	g := newMemGuest(1 + int(memPages%16))
	r := NewStreamReplayer(streamOf(batches...))
	// Every entry is at least 2 bytes and every exit takes one.
	err := driveBackup(t, r, g, len(first)+len(second)+2)
	if !errors.Is(err, vm.ErrLogEnd) {
		return
	}
	var evs []Event
	for _, b := range batches {
		e, err := DecodeBatch(b)
		if err != nil {
			t.Fatalf("replay accepted a log that does not decode: %v", err)
		}
		evs = append(evs, e...)
	}
	want := make([]byte, len(g.mem))
	var kicks, pages, verified uint64
	for _, ev := range evs {
		switch ev.Type {
		case Kick:
			kicks++
		case CheckpointChunk:
			var cr chunkReader
			if err := cr.decode(ev.Data); err != nil {
				t.Fatalf("replay accepted a page chunk that does not decode: %v", err)
			}
			content := 0
			for _, p := range cr.Pages() {
				if p.Page >= uint64(len(want)/PageSize) {
					t.Fatalf("replay accepted a %v chunk page %#x in a %d-byte memory", p.Kind, p.Page*PageSize, len(want))
				}
				page := want[p.Page*PageSize : (p.Page+1)*PageSize]
				switch p.Kind {
				case PageZero:
					clear(page)
					pages++
				case PageContent:
					copy(page, cr.Content(content))
					content++
					pages++
				case PageHashed:
					if HashPage(page) != p.Hash {
						t.Fatalf("replay accepted hashed page %#x, which the backup does not hold", p.Page*PageSize)
					}
					verified++
				}
			}
		case CheckpointPage, CheckpointZero:
			if ev.Value > int64(len(want))-PageSize {
				t.Fatalf("replay accepted %s in a %d-byte memory", ev.String(), len(want))
			}
			pages++
			if ev.Type == CheckpointZero {
				clear(want[ev.Value : ev.Value+PageSize])
			} else {
				copy(want[ev.Value:], ev.Data)
			}
		}
	}
	if !bytes.Equal(g.mem, want) {
		t.Fatal("memory after the replay is not what the log's checkpoints hold")
	}
	if st := r.Stats(); st.Checkpoints != kicks || st.CheckpointPages != pages || st.CheckpointPagesVerified != verified {
		t.Fatalf("loaded %d checkpoints of %d pages (%d verified); the log has %d kicks and %d pages (%d hashed)",
			st.Checkpoints, st.CheckpointPages, st.CheckpointPagesVerified, kicks, pages, verified)
	}
}
