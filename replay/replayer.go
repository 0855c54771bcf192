package replay

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

// Replayer implements vm.Replayer over a recorded log: it serves a backup
// the primary's inputs at the same exits and reports the first place the
// backup does something else. The log is either whole (NewReplayer) or
// streamed in as the primary produces it (NewStreamReplayer). All methods
// run on the vCPU goroutine.
type Replayer struct {
	events []Event
	i      int
	last   uint64 // the last exit the log reaches so far
	mark   *Event // an ExitMark met before its exit was checked
	dec    Decoder

	next    func() ([]byte, error) // the stream; nil for a whole log
	batches int                    // batches decoded, to name one that does not
	ended   bool                   // no more batches will come
	err     error                  // a broken or garbled stream

	exits uint64 // the last exit checked
	// For Progress from other goroutines: the last exit the log reaches
	// and the last exit the backup checked.
	logExit, replayedExit atomic.Uint64
	state                 stateTracker
	chunk                 chunkReader
	statsMu               sync.Mutex
	stats                 ReplayerStats
	// idle: every event decoded so far was consumed (read from any
	// goroutine: a backup reports its replay progress by it).
	idle atomic.Bool
	// recent are the last entries consumed, for divergence reports;
	// copied, not formatted, so consuming costs no allocation.
	recent     [16]Event
	recentNext int
}

// consume moves past the next entry, remembering it for Recent.
func (r *Replayer) consume() {
	r.recent[r.recentNext%len(r.recent)] = r.events[r.i]
	r.recentNext++
	r.i++
	if r.i >= len(r.events) {
		r.idle.Store(true)
	}
}

// Idle reports, safely from any goroutine, whether the backup has used
// every entry it was given. A backup whose guest runs on without exits
// (waiting for an interrupt only the next batch brings) does not ask for
// more, so its progress must be reported from outside the vCPU loop.
func (r *Replayer) Idle() bool { return r.idle.Load() }

// Recent lists the last entries the backup consumed, oldest first: the
// context of a divergence.
func (r *Replayer) Recent() []string {
	var out []string
	for i := max(0, r.recentNext-len(r.recent)); i < r.recentNext; i++ {
		out = append(out, r.recent[i%len(r.recent)].String())
	}
	return out
}

var _ vm.Replayer = (*Replayer)(nil)

// NewReplayer decodes a whole recording (batches in order).
func NewReplayer(batches [][]byte) (*Replayer, error) {
	r := &Replayer{ended: true}
	for _, b := range batches {
		if err := r.decode(b); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// NewStreamReplayer replays batches as next hands them over (from the log
// channel). next blocks while the log is empty and returns io.EOF once the
// primary's log has ended.
func NewStreamReplayer(next func() ([]byte, error)) *Replayer {
	return &Replayer{next: next}
}

// decode appends the events of the next batch; an error names the batch
// (counting from 1) and the offset of the entry in it.
func (r *Replayer) decode(b []byte) error {
	r.idle.Store(false)
	r.batches++
	if err := r.dec.Reset(b); err != nil {
		return fmt.Errorf("batch %d: %w", r.batches, err)
	}
	for {
		var ev Event
		err := r.dec.Next(&ev)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("batch %d: %w", r.batches, err)
		}
		ev.Data = append([]byte(nil), ev.Data...) // Data aliases the batch
		r.events = append(r.events, ev)
		r.last = max(r.last, ev.Exit)
		r.logExit.Store(r.last)
	}
}

// fill waits for the next batch of a stream. It reports false when no
// more will come.
func (r *Replayer) fill() bool {
	if r.ended || r.err != nil {
		return false
	}
	b, err := r.next()
	if errors.Is(err, io.EOF) {
		r.ended = true
		return false
	}
	if err != nil {
		r.err = fmt.Errorf("replay log stream: %w", err)
		return false
	}
	// Consumed events are gone for good; keep memory bounded.
	if r.i > 0 && r.mark == nil {
		r.events = append(r.events[:0], r.events[r.i:]...)
		r.i = 0
	}
	if err := r.decode(b); err != nil {
		r.err = err
		return false
	}
	return true
}

// Len is the number of events in the log.
func (r *Replayer) Len() int { return len(r.events) }

func (r *Replayer) peek() *Event {
	for r.i >= len(r.events) {
		if !r.fill() {
			return nil
		}
	}
	return &r.events[r.i]
}

// skipMark sets aside an ExitMark at exit n that comes before input
// entries at n (the primary marks an exit before its inputs, the backup
// checks the mark after them).
func (r *Replayer) skipMark(n uint64) {
	if ev := r.peek(); ev != nil && ev.Type == ExitMark && ev.Exit == n && r.mark == nil {
		r.mark = ev
		r.consume()
	}
}

// Exit implements vm.Replayer.
func (r *Replayer) Exit(n uint64, kind kvm.ExitKind, _ uint64, rip func() uint64) error {
	// The backup may run ahead of the log: wait until the log reaches
	// this exit (the primary marks every K exits) or ends.
	for n > r.last && r.fill() {
	}
	if r.err != nil {
		return r.err
	}
	if n > r.last {
		return vm.ErrLogEnd
	}
	if ev := r.peek(); ev != nil && ev.Exit < n {
		return fmt.Errorf("the primary logged %v at exit #%d, which the backup passed without using it", ev.Type, ev.Exit)
	}
	if r.mark == nil {
		r.skipMark(n)
	}
	if ev := r.peek(); ev != nil && ev.Exit == n {
		switch ev.Type {
		case ClockRead:
			return errors.New("the primary read the clock more times at this exit")
		case DiskRead, DiskDone:
			return fmt.Errorf("the primary read disk %d more times at this exit", ev.Device)
		}
	}
	if m := r.mark; m != nil {
		r.mark = nil
		if m.Exit != n {
			return fmt.Errorf("internal: mark for exit #%d checked at #%d", m.Exit, n)
		}
		if got := uint8(kind); got != m.Kind {
			return fmt.Errorf("exit kind %v, the primary's was %v", kind, kvm.ExitKind(m.Kind))
		}
		// Only instruction-caused exits stop at an exact instruction. An
		// interrupt-window exit comes when the CPU notices it may take an
		// interrupt; under QEMU's software CPU (the nested test host) that
		// is at a translation-block boundary, a few instructions apart
		// between runs, so its RIP is not compared. (A replicated VM does
		// not use window exits at all; see vm's noWindows.)
		if kind != kvm.ExitIRQWindowOpen {
			if got := rip(); got != m.RIP {
				return fmt.Errorf("RIP %#x, the primary's was %#x", got, m.RIP)
			}
		}
	}
	r.exits = n
	r.replayedExit.Store(n)
	return nil
}

// Progress reports, safely from any goroutine, the last exit the log has
// reached and the last the backup replayed: their difference is the
// backup's lag in exits.
func (r *Replayer) Progress() (logExit, replayedExit uint64) {
	return r.logExit.Load(), r.replayedExit.Load()
}

// ClockRead implements vm.Replayer.
func (r *Replayer) ClockRead(n uint64) (time.Duration, error) {
	r.skipMark(n)
	ev := r.peek()
	if ev == nil {
		return 0, r.endErr()
	}
	if ev.Type != ClockRead || ev.Exit != n {
		return 0, fmt.Errorf("a device read the clock; the log has %s next", describe(ev))
	}
	r.consume()
	return time.Duration(ev.Value), nil
}

// DiskRead implements vm.Replayer.
func (r *Replayer) DiskRead(n uint64, dev int, off int64, p []byte) error {
	r.skipMark(n)
	ev := r.peek()
	switch {
	case ev == nil:
		return r.endErr()
	case ev.Exit == n && ev.Type == DiskDone && int(ev.Device) == dev:
		r.consume()
		return vm.ErrPrimaryReadFailed
	case ev == nil || ev.Exit != n || ev.Type != DiskRead:
		return fmt.Errorf("disk %d read %d bytes at %d; the log has %s next", dev, len(p), off, describe(ev))
	case int(ev.Device) != dev || ev.Value != off || len(ev.Data) != len(p):
		return fmt.Errorf("disk %d read %d bytes at %d; the primary's disk %d read %d at %d", dev, len(p), off, ev.Device, len(ev.Data), ev.Value)
	}
	r.consume()
	copy(p, ev.Data)
	return nil
}

// Output implements vm.Replayer: the backup's output must be the one the
// primary logged next at this exit, byte for byte (by hash).
func (r *Replayer) Output(n uint64, kind vm.OutputKind, dev int, off int64, data []byte) error {
	r.skipMark(n)
	ev := r.peek()
	k := uint8(kind) // the log numbers kinds as vm does (TestOutputKindsMatchVM)
	switch {
	case ev == nil:
		return r.endErr()
	case ev.Exit != n || ev.Type != Output:
		return fmt.Errorf("the backup's %s; the log has %s next", outputWhat(k, dev, off, len(data)), describe(ev))
	case ev.Kind != k || int(ev.Device) != dev:
		return fmt.Errorf("the backup's %s; the primary's %s there", outputWhat(k, dev, off, len(data)), outputWho(ev.Kind, int(ev.Device)))
	case ev.Hash != OutputHash(k, uint8(dev), off, data):
		return fmt.Errorf("the backup's %s, other bytes than the primary's (output hashes differ)", outputWhat(k, dev, off, len(data)))
	}
	r.consume()
	r.statsMu.Lock()
	r.stats.Outputs++
	r.statsMu.Unlock()
	return nil
}

// outputWho names the device and its act: "NIC 0 sent a frame".
func outputWho(kind uint8, dev int) string {
	if kind == OutputDiskWrite {
		return fmt.Sprintf("disk %d wrote", dev)
	}
	return fmt.Sprintf("NIC %d sent a frame", dev)
}

// outputWhat adds the size (and offset): "disk 0 wrote 1024 bytes at 4096".
func outputWhat(kind uint8, dev int, off int64, size int) string {
	if kind == OutputDiskWrite {
		return fmt.Sprintf("%s %d bytes at %d", outputWho(kind, dev), size, off)
	}
	return fmt.Sprintf("%s of %d bytes", outputWho(kind, dev), size)
}

// Next implements vm.Replayer.
func (r *Replayer) Next(n uint64, g vm.GuestState) (vm.Input, bool, error) {
	for {
		ev := r.peek()
		switch {
		case ev == nil && r.err != nil:
			return vm.Input{}, false, r.err
		case ev == nil:
			return vm.Input{}, false, vm.ErrLogEnd
		case ev.Exit > n:
			return vm.Input{}, false, nil
		case ev.Exit < n:
			return vm.Input{}, false, fmt.Errorf("the primary logged %v at exit #%d, which the backup passed", ev.Type, ev.Exit)
		}
		switch ev.Type {
		case TimerFired:
			r.consume()
			return vm.Input{Kind: vm.InputTimer, Timer: int(ev.Device), Now: time.Duration(ev.Value)}, true, nil
		case ConsoleInput:
			r.consume()
			return vm.Input{Kind: vm.InputConsole, Data: ev.Data}, true, nil
		case FrameReceived:
			r.consume()
			return vm.Input{Kind: vm.InputFrame, Device: int(ev.Device), Data: ev.Data}, true, nil
		case StateDigest:
			r.consume()
			if err := r.checkDigest(ev, g); err != nil {
				return vm.Input{}, false, err
			}
		case Kick:
			r.consume()
			if err := r.loadCheckpoint(n, g); err != nil {
				return vm.Input{}, false, err
			}
		case InterruptInjected:
			return vm.Input{}, false, nil
		case ExitMark:
			// The exit's own mark was checked (or set aside) before its
			// inputs; this one is a second mark, or one after the inputs.
			return vm.Input{}, false, fmt.Errorf("ExitMark at exit #%d out of place: after the exit's inputs, or a second one", ev.Exit)
		case Output:
			return vm.Input{}, false, fmt.Errorf("the primary's %s at this exit; the backup's devices produced nothing", outputWho(ev.Kind, int(ev.Device)))
		default:
			return vm.Input{}, false, fmt.Errorf("the primary logged %v at this exit; the backup's devices did not ask for it", ev.Type)
		}
	}
}

// MoreAt implements vm.Replayer.
func (r *Replayer) MoreAt(n uint64) (bool, error) {
	ev := r.peek()
	switch {
	case ev == nil:
		return false, r.err
	case ev.Exit != n:
		return false, nil
	case ev.Type == InterruptInjected:
		return false, fmt.Errorf("the primary injected vector %#x here; the backup's interrupt controller asserted nothing it could inject", ev.Kind)
	}
	return true, nil
}

// checkDigest compares the backup's state with the primary's digest.
func (r *Replayer) checkDigest(ev *Event, g vm.GuestState) error {
	regs, mem, err := r.state.digest(g)
	if err != nil {
		return fmt.Errorf("state digest: %w", err)
	}
	r.statsMu.Lock()
	r.stats.Digests++
	r.stats.LastDigestExit = ev.Exit
	r.statsMu.Unlock()
	switch {
	case regs != ev.Regs:
		return fmt.Errorf("%w: register digest %x, the primary's %x (%s)", ErrStateDiffers, regs[:8], ev.Regs[:8], r.describeRegs())
	case mem != ev.Memory:
		return fmt.Errorf("%w: memory digest %x, the primary's %x", ErrStateDiffers, mem[:8], ev.Memory[:8])
	}
	return nil
}

func (r *Replayer) describeRegs() string {
	c := &r.state.cpu
	return fmt.Sprintf("backup RIP %#x RSP %#x RAX %#x RFLAGS %#x", c.Regs.RIP, c.Regs.RSP, c.Regs.RAX, c.Regs.RFLAGS)
}

// ErrStateDiffers: a StateDigest of the backup differs from the primary's.
var ErrStateDiffers = errors.New("the backup's state differs from the primary's")

// loadCheckpoint loads the vCPU state and pages that follow a Kick.
func (r *Replayer) loadCheckpoint(n uint64, g vm.GuestState) error {
	ev := r.peek()
	if ev == nil || ev.Type != CheckpointCPU || ev.Exit != n {
		return fmt.Errorf("a kick at exit #%d without its checkpoint: the log has %s next", n, describe(ev))
	}
	r.consume()
	if err := r.state.cpu.UnmarshalBinary(ev.Data); err != nil {
		return fmt.Errorf("CheckpointCPU at exit #%d: %w", n, err)
	}
	// Collect what the backup itself wrote so far first: the digest set
	// must include it, and the checkpoint's pages come on top.
	if err := r.state.collect(g); err != nil {
		return err
	}
	mem := g.Memory()
	var pages, verified uint64
	for {
		ev := r.peek()
		if ev == nil || ev.Exit != n || (ev.Type != CheckpointPage && ev.Type != CheckpointZero && ev.Type != CheckpointChunk) {
			break
		}
		r.consume()
		if ev.Type == CheckpointChunk {
			loaded, checked, err := r.loadChunk(n, ev.Data, mem)
			pages, verified = pages+loaded, verified+checked
			if err != nil {
				return err
			}
			continue
		}
		// Compared without computing the page's end: the decoder accepts
		// addresses up to MaxInt64-PageSize+1, where Value+PageSize
		// overflows.
		if ev.Value < 0 || ev.Value > int64(len(mem))-PageSize {
			return fmt.Errorf("%v at exit #%d: address %#x outside the %d-byte guest memory", ev.Type, n, ev.Value, len(mem))
		}
		page := mem[ev.Value : ev.Value+PageSize]
		if ev.Type == CheckpointZero {
			clear(page)
		} else {
			copy(page, ev.Data)
		}
		r.state.markWritten(ev.Value)
		pages++
	}
	if err := g.RestoreCPU(&r.state.cpu); err != nil {
		return fmt.Errorf("load checkpoint at exit #%d: %w", n, err)
	}
	r.statsMu.Lock()
	r.stats.Checkpoints++
	r.stats.CheckpointPages += pages
	r.stats.CheckpointPagesVerified += verified
	r.statsMu.Unlock()
	return nil
}

// loadChunk applies a CheckpointChunk to memory: zero and content pages are
// written, and every hashed page is checked against the backup's own. The
// backup has no way to ask the primary for a page (the log flows one way),
// so a hashed page that differs is a divergence: the backup stops rather
// than run on from memory the primary does not have. It reports the pages
// it wrote and the pages it checked.
func (r *Replayer) loadChunk(n uint64, chunk, mem []byte) (loaded, verified uint64, err error) {
	if err := r.chunk.decode(chunk); err != nil {
		return 0, 0, fmt.Errorf("CheckpointChunk at exit #%d: %w", n, err)
	}
	memPages := uint64(len(mem) / PageSize)
	content := 0
	for _, p := range r.chunk.Pages() {
		if p.Page >= memPages {
			return loaded, verified, fmt.Errorf("CheckpointChunk at exit #%d: %v page %#x outside the %d-byte guest memory", n, p.Kind, p.Page*PageSize, len(mem))
		}
		addr := int64(p.Page) * PageSize
		page := mem[addr : addr+PageSize]
		switch p.Kind {
		case PageZero:
			clear(page)
		case PageContent:
			copy(page, r.chunk.Content(content))
			content++
		case PageHashed:
			if h := HashPage(page); h != p.Hash {
				return loaded, verified, fmt.Errorf("%w: checkpoint at exit #%d: page %#x hashes to %x on the backup, %x on the primary, which sent only the hash (it had not written the page since a point the backup replayed)",
					ErrStateDiffers, n, addr, h[:8], p.Hash[:8])
			}
			verified++
			continue
		}
		r.state.markWritten(addr)
		loaded++
	}
	return loaded, verified, nil
}

// ReplayerStats counts what a Replayer checked and loaded.
type ReplayerStats struct {
	Digests        uint64
	LastDigestExit uint64
	Checkpoints    uint64
	// CheckpointPages counts the pages checkpoints wrote (content or
	// zero); CheckpointPagesVerified those the backup already held and
	// checked against the primary's hash.
	CheckpointPages, CheckpointPagesVerified uint64
	// Outputs is how many of the backup's frames and disk writes matched
	// the primary's hash.
	Outputs uint64
}

// Stats reports what was checked so far; safe from any goroutine.
func (r *Replayer) Stats() ReplayerStats {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	return r.stats
}

// Injected implements vm.Replayer.
func (r *Replayer) Injected(n uint64, vector uint8) error {
	ev := r.peek()
	if ev == nil {
		return r.endErr()
	}
	if ev.Type != InterruptInjected || ev.Exit != n {
		return fmt.Errorf("the backup injected vector %#x; the log has %s next", vector, describe(ev))
	}
	r.consume()
	if ev.Kind != vector {
		return fmt.Errorf("the backup injected vector %#x, the primary %#x", vector, ev.Kind)
	}
	return nil
}

// Drained implements vm.Replayer.
func (r *Replayer) Drained() bool { return r.peek() == nil && r.err == nil }

// endErr is why peek found nothing: a broken stream, or the end of the log
// (vm.ErrLogEnd: a backup whose primary was lost may go live here).
func (r *Replayer) endErr() error {
	if r.err != nil {
		return r.err
	}
	return vm.ErrLogEnd
}

func describe(ev *Event) string {
	if ev == nil {
		return "nothing more"
	}
	return fmt.Sprintf("%v at exit #%d", ev.Type, ev.Exit)
}
