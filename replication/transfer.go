package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"time"

	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/snapshot"
)

// A backup made from a running VM (re-protection, FT VMotion) gets the
// VM's state over the log channel before the log proper: a start header
// saying so (Transfer), then rounds of pre-copy, each a snapshot in the
// snapshot package's format cut into transfer chunks and closed by a
// round-end entry. The first round is a full snapshot copied while the
// guest runs; each later one is a delta of the pages written since the
// round before began (the dirty-page logs, cleared at each round's start),
// also copied while the guest runs. A page written during a copy is in the
// next round's delta, so whatever a round read half-changed is sent again.
// The last round is taken at one exit with the guest stopped: the pages
// written since the round before, and the machine state (vCPU, devices,
// exit number). At that same exit the VM starts recording, so the log's
// first entry continues exactly that state.
//
// Entry tags: a replay batch starts with its version byte (1), the start
// header with '{', released and handover entries with 0xF0/0xF1.
const (
	transferChunkTag = 0xF2 // tag, then snapshot bytes
	transferRoundTag = 0xF3 // tag, final flag (1), round number (4)
)

// transferChunkBytes is how much snapshot one chunk entry carries.
const transferChunkBytes = logchannel.MaxEntrySize - 1

// TransferOptions tune the pre-copy that makes a backup from a running VM.
type TransferOptions struct {
	// TargetPause is how long the guest may stop for the last round: the
	// pre-copy goes on while the pages left would take longer than this
	// to send at the rate measured. Default 50 ms.
	TargetPause time.Duration
	// MaxRounds bounds the rounds copied while the guest runs; after them
	// the last round is taken whatever is left (also once auto-converge
	// throttles the guest as far as it goes and a round still leaves
	// about as much as the one before). Default 30.
	MaxRounds int
	// NoAutoConverge turns auto-converge off: by default, when a round
	// leaves almost as many pages to send as the one before (the guest
	// writes memory as fast as the channel sends it), the guest is
	// throttled, in steps, to a smaller share of its vCPU's time.
	NoAutoConverge bool
	// Progress, if set, is told how the transfer goes after each round.
	Progress func(TransferProgress)
}

// TransferProgress is the state of a running pre-copy.
type TransferProgress struct {
	Round int
	// Final: the last round (guest stopped) was sent.
	Final bool
	// RoundPages the pages this round named; Pages all pages so far (a
	// page sent in several rounds counts each time); Bytes the snapshot
	// bytes sent.
	RoundPages, Pages int
	Bytes             int64
	// MemoryPages is the guest's memory in pages; Dirty the pages written
	// since this round began, which the next round sends.
	MemoryPages, Dirty int
	// Rate is the bytes per second of the last round; ETA the time the
	// dirty pages would take at that rate.
	Rate float64
	ETA  time.Duration
	// Throttle is the share of time auto-converge keeps the guest
	// stopped (0 to 1).
	Throttle float64
	Elapsed  time.Duration
}

func (p TransferProgress) String() string {
	s := fmt.Sprintf("round %d: %d pages (%d of %d in memory written since), %.1f MiB sent at %.1f MiB/s, about %v left",
		p.Round, p.RoundPages, p.Dirty, p.MemoryPages, float64(p.Bytes)/(1<<20), p.Rate/(1<<20), p.ETA.Round(time.Millisecond))
	if p.Throttle > 0 {
		s += fmt.Sprintf(", guest throttled %.0f%%", p.Throttle*100)
	}
	if p.Final {
		s = fmt.Sprintf("last round %d (guest stopped): %d pages; %.1f MiB in %v", p.Round, p.RoundPages, float64(p.Bytes)/(1<<20), p.Elapsed.Round(time.Millisecond))
	}
	return s
}

// TransferResult is how a pre-copy went.
type TransferResult struct {
	Rounds int
	Pages  int
	Bytes  int64
	// Pause is how long the guest stood still for the last round and the
	// switch to recording; Total the whole transfer.
	Pause, Total time.Duration
	// MaxThrottle is the most auto-converge throttled the guest (0-1).
	MaxThrottle float64
	// Exit is where the backup starts replaying.
	Exit uint64
}

func (r TransferResult) String() string {
	s := fmt.Sprintf("%d rounds, %d pages, %.1f MiB in %v; guest paused %v; replication from exit #%d",
		r.Rounds, r.Pages, float64(r.Bytes)/(1<<20), r.Total.Round(time.Millisecond), r.Pause.Round(time.Microsecond), r.Exit)
	if r.MaxThrottle > 0 {
		s += fmt.Sprintf("; auto-converge throttled the guest up to %.0f%%", r.MaxThrottle*100)
	}
	return s
}

// appender is where transfer entries go: the log channel's Sender.
type appender interface {
	Append(ctx context.Context, entry []byte) (uint64, error)
}

// chunkWriter cuts a snapshot stream into transfer chunk entries.
type chunkWriter struct {
	ctx    context.Context
	sender appender
	buf    []byte
	n      int64
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = make([]byte, 1, 1+transferChunkBytes)
			w.buf[0] = transferChunkTag
		}
		k := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return total - len(p), err
			}
		}
	}
	return total, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) <= 1 {
		return nil
	}
	if _, err := w.sender.Append(w.ctx, w.buf); err != nil {
		return fmt.Errorf("send state to the new backup: %w", err)
	}
	w.n += int64(len(w.buf) - 1)
	w.buf = w.buf[:1]
	return nil
}

// endRound closes a round: the chunks so far, then the round-end entry.
func (w *chunkWriter) endRound(round int, final bool) error {
	if err := w.flush(); err != nil {
		return err
	}
	e := []byte{transferRoundTag, 0, 0, 0, 0, 0}
	if final {
		e[1] = 1
	}
	binary.BigEndian.PutUint32(e[2:], uint32(round))
	if _, err := w.sender.Append(w.ctx, e); err != nil {
		return fmt.Errorf("send state to the new backup: %w", err)
	}
	return nil
}

// precopy sends inst's state to the backup at the other end of sender
// while the guest runs (see the top of this file), and in the last round,
// at one exit with the guest stopped, calls atSwitch: the caller starts
// recording there. atStart runs at the exit where round 1 begins, before
// the dirty-page logs are read: a VM still recording for a lost backup
// stops there, since its recorder reads (and clears) the same logs and
// would take pages from the rounds. id is inst's identity.
func precopy(ctx context.Context, inst *instance.Instance, id *snapshot.Identity, sender *logchannel.Sender, opts TransferOptions, atStart, atSwitch func() error) (TransferResult, error) {
	if opts.TargetPause <= 0 {
		opts.TargetPause = 50 * time.Millisecond
	}
	if opts.MaxRounds <= 0 {
		opts.MaxRounds = 30
	}
	v := inst.VM
	mem := v.Memory()
	memPages := len(mem) / snapshot.PageSize
	start := time.Now()
	w := &chunkWriter{ctx: ctx, sender: sender}
	var res TransferResult
	marks := &pageMarks{v: v}
	var bitmap []uint64 // the pages a round sends
	var base snapshot.Sum
	thr := newThrottle(inst)
	defer thr.stop()

	prog := TransferProgress{MemoryPages: memPages}
	prevDirty := -1
	for round := 1; ; round++ {
		roundStart := time.Now()
		bytesBefore := w.n
		var meta snapshot.Meta
		// The round starts at an exit: the logs are read (and cleared)
		// there, so every write after this point is in the next round.
		err := v.AtExit(ctx, func() error {
			if round == 1 && atStart != nil {
				if err := atStart(); err != nil {
					return err
				}
			}
			var err error
			if bitmap, err = marks.take(bitmap); err != nil {
				return err
			}
			return v.SaveState(&meta.State)
		})
		if err != nil {
			return res, fmt.Errorf("pre-copy round %d: %w", round, err)
		}
		meta.Identity = *id
		roundPages := memPages
		if round == 1 {
			meta.Kind = snapshot.Full
		} else {
			meta.Kind, meta.Base = snapshot.Delta, base
			roundPages = countPages(bitmap)
		}
		sw, err := snapshot.NewWriter(w, &meta)
		if err != nil {
			return res, err
		}
		if round == 1 {
			err = sw.Memory(mem)
		} else {
			err = sw.Pages(mem, bitmap)
		}
		if err != nil {
			return res, fmt.Errorf("pre-copy round %d: %w", round, err)
		}
		if base, err = sw.Close(); err != nil {
			return res, err
		}
		if err := w.endRound(round, false); err != nil {
			return res, err
		}
		res.Rounds, res.Pages = round, res.Pages+roundPages
		took := time.Since(roundStart)
		prog.Round, prog.RoundPages, prog.Pages, prog.Bytes = round, roundPages, res.Pages, w.n
		if took > 0 {
			prog.Rate = float64(w.n-bytesBefore) / took.Seconds()
		}
		// What the guest wrote meanwhile is the next round. Peeking at
		// the logs would clear them, so the next round's start reads them;
		// here the count is estimated from this round's.
		var dirty int
		err = v.AtExit(ctx, func() error {
			var err error
			dirty, err = marks.count()
			return err
		})
		if err != nil {
			return res, fmt.Errorf("pre-copy round %d: %w", round, err)
		}
		prog.Dirty = dirty
		if prog.Rate > 0 {
			prog.ETA = time.Duration(float64(dirty*snapshot.PageSize) / prog.Rate * float64(time.Second))
		}
		prog.Throttle, prog.Elapsed = thr.share(), time.Since(start)
		if opts.Progress != nil {
			opts.Progress(prog)
		}
		if prog.ETA <= opts.TargetPause || round >= opts.MaxRounds {
			break
		}
		// Auto-converge: the guest writes about as fast as the channel
		// sends. Stop it for a growing share of its time until the
		// rounds shrink.
		if !opts.NoAutoConverge && round >= 2 && prevDirty >= 0 && dirty*4 > prevDirty*3 {
			if thr.share() >= throttleSteps[len(throttleSteps)-1] {
				// Throttled as far as it goes and still not shrinking:
				// more rounds would not help; the last round takes what
				// is left.
				break
			}
			res.MaxThrottle = max(res.MaxThrottle, thr.raise())
		}
		prevDirty = dirty
	}

	// The last round: at one exit, guest stopped, and one after which it
	// runs on (never inside a halt): the backup resumes this state by
	// running the guest, and the primary records from here.
	final := res.Rounds + 1
	var pauseStart time.Time
	err := v.AtRunningExit(ctx, func() error {
		pauseStart = time.Now()
		var meta snapshot.Meta
		var err error
		if bitmap, err = marks.take(bitmap); err != nil {
			return err
		}
		if err := v.SaveState(&meta.State); err != nil {
			return err
		}
		meta.Kind, meta.Base, meta.Identity = snapshot.Delta, base, *id
		sw, err := snapshot.NewWriter(w, &meta)
		if err != nil {
			return err
		}
		if err := sw.Pages(mem, bitmap); err != nil {
			return err
		}
		if _, err := sw.Close(); err != nil {
			return err
		}
		if err := w.endRound(final, true); err != nil {
			return err
		}
		res.Exit = meta.State.Exit
		res.Pages += countPages(bitmap)
		return atSwitch()
	})
	res.Pause = time.Since(pauseStart)
	if err != nil {
		return res, fmt.Errorf("pre-copy last round: %w", err)
	}
	thr.stop()
	res.Rounds, res.Bytes, res.Total = final, w.n, time.Since(start)
	if opts.Progress != nil {
		opts.Progress(TransferProgress{Round: final, Final: true, RoundPages: countPages(bitmap), Pages: res.Pages, Bytes: w.n,
			MemoryPages: memPages, Elapsed: res.Total, Throttle: res.MaxThrottle})
	}
	return res, nil
}

// pageMarks are the pages written since the last round began: the
// dirty-page logs are read-and-clear, so what a peek at them read is kept
// here for the round that sends it. vCPU goroutine only (inside AtExit).
type pageMarks struct {
	v interface {
		WrittenPages([]uint64) ([]uint64, error)
	}
	scratch, pending []uint64
}

// collect reads the logs into pending.
func (m *pageMarks) collect() error {
	var err error
	if m.scratch, err = m.v.WrittenPages(m.scratch); err != nil {
		return err
	}
	if len(m.pending) < len(m.scratch) {
		m.pending = append(m.pending, make([]uint64, len(m.scratch)-len(m.pending))...)
	}
	for i, w := range m.scratch {
		m.pending[i] |= w
	}
	return nil
}

// count returns how many pages are marked now.
func (m *pageMarks) count() (int, error) {
	if err := m.collect(); err != nil {
		return 0, err
	}
	return countPages(m.pending), nil
}

// take moves every mark into into (reused if large enough) and clears
// them: the round starting now sends those pages.
func (m *pageMarks) take(into []uint64) ([]uint64, error) {
	if err := m.collect(); err != nil {
		return nil, err
	}
	into = append(into[:0], m.pending...)
	clear(m.pending)
	return into, nil
}

func countPages(bitmap []uint64) int {
	n := 0
	for _, w := range bitmap {
		n += bits.OnesCount64(w)
	}
	return n
}

// throttle is auto-converge: it stops the guest, at exits, for a share of
// its time until stopped.
type throttle struct {
	// atExit runs a function at the VM's next exit (vm.VM.AtExit).
	atExit func(context.Context, func() error) error
	mu     sync.Mutex
	frac   float64
	quit   chan struct{}
	done   chan struct{}
}

// throttleGap is the least the guest runs between two stops.
const throttleGap = time.Millisecond

// throttleSteps are the shares auto-converge raises the throttle through.
var throttleSteps = [...]float64{0.3, 0.5, 0.7, 0.85, 0.95}

func newThrottle(inst *instance.Instance) *throttle { return &throttle{atExit: inst.VM.AtExit} }

func (t *throttle) share() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.frac
}

// raise takes the next step and returns the new share.
func (t *throttle) raise() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range throttleSteps {
		if s > t.frac {
			t.frac = s
			break
		}
	}
	if t.quit == nil {
		t.quit, t.done = make(chan struct{}), make(chan struct{})
		go t.run(t.quit, t.done)
	}
	return t.frac
}

// run stops the guest for the throttle's share of its time until quit is
// closed; it closes done on its way out. Each stop lasts share/(1-share)
// times as long as the guest ran since the last one ended, measured, not
// assumed: waking, kicking the vCPU and reaching its next exit take
// milliseconds under a software CPU, and a fixed period would let the
// guest run that long every time.
func (t *throttle) run(quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	lastEnd := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = t.atExit(ctx, func() error {
			f := t.share()
			ran := time.Since(lastEnd)
			stopFor := min(time.Duration(float64(ran)*f/(1-f)), maxThrottleStop)
			select {
			case <-time.After(stopFor):
			case <-quit:
			}
			lastEnd = time.Now()
			return nil
		})
		cancel()
		select {
		case <-quit:
			return
		case <-time.After(throttleGap):
		}
	}
}

// maxThrottleStop bounds one stop of the guest by auto-converge, so a
// guest never freezes for long (its timers and clients wait meanwhile).
const maxThrottleStop = 200 * time.Millisecond

func (t *throttle) stop() {
	t.mu.Lock()
	q, d := t.quit, t.done
	t.quit = nil
	t.frac = 0
	t.mu.Unlock()
	if q != nil {
		close(q)
		<-d
	}
}

// transferReader reads a pre-copy on the backup: the snapshot bytes of
// one round at a time from chunk entries, and the round-end entries.
type transferReader struct {
	next func() (uint64, []byte, error)
	// pending is the unread rest of the current chunk; end is set once a
	// round-end entry was met (final says whether it was the last).
	pending    []byte
	end, final bool
	round      int
	lastSeq    uint64
	bytes      int64
}

// Read implements io.Reader over the current round's chunks; at its
// round-end entry it returns io.EOF.
func (r *transferReader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		if r.end {
			return 0, io.EOF
		}
		seq, e, err := r.next()
		if err != nil {
			return 0, fmt.Errorf("receive the primary's state: %w", err)
		}
		r.lastSeq = seq
		switch {
		case len(e) > 0 && e[0] == transferChunkTag:
			r.pending = e[1:]
			r.bytes += int64(len(e) - 1)
		case len(e) == 6 && e[0] == transferRoundTag:
			r.end, r.final, r.round = true, e[1] == 1, int(binary.BigEndian.Uint32(e[2:]))
		default:
			return 0, fmt.Errorf("receive the primary's state: log entry %d (%d bytes) where a transfer chunk or a round's end belongs", seq, len(e))
		}
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}

// nextRound readies the reader for the next round: the current one must
// have been read to its end entry.
func (r *transferReader) nextRound() error {
	if !r.end || len(r.pending) > 0 {
		return errors.New("receive the primary's state: a round's snapshot ends before its round-end entry")
	}
	r.end = false
	return nil
}

// receiveTransfer loads a pre-copy into inst (created, not run) and
// returns the last entry's sequence number: the log proper follows.
func receiveTransfer(inst *instance.Instance, next func() (uint64, []byte, error), report func(round int, bytes int64)) (uint64, error) {
	id, err := inst.Identity()
	if err != nil {
		return 0, err
	}
	chain, err := snapshot.NewChain(inst.VM, id)
	if err != nil {
		return 0, err
	}
	r := &transferReader{next: next}
	for {
		if _, err := chain.Load(r); err != nil {
			return 0, err
		}
		// The snapshot ended at its end record; the round's end entry
		// follows.
		var one [1]byte
		if n, err := r.Read(one[:]); n != 0 || err != io.EOF {
			if err == nil {
				err = errors.New("bytes after a round's snapshot")
			}
			return 0, fmt.Errorf("receive the primary's state: round %d: %w", r.round+1, err)
		}
		if report != nil {
			report(r.round, r.bytes)
		}
		if r.final {
			break
		}
		if err := r.nextRound(); err != nil {
			return 0, err
		}
	}
	if _, err := chain.Finish(); err != nil {
		return 0, err
	}
	return r.lastSeq, nil
}
