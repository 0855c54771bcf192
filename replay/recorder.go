package replay

import (
	"fmt"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

// RecorderOptions tune a Recorder.
type RecorderOptions struct {
	// MarkEvery puts an ExitMark on every MarkEvery-th exit even without
	// other entries, so a backup of a guest that reads no inputs still
	// checks its path now and then. Default 64; 1 marks every exit.
	MarkEvery uint64
	// BatchBytes is the batch size at which the recorder hands a batch
	// on. Default 16 KiB.
	BatchBytes int
}

// Recorder implements vm.Recorder: it turns a primary's inputs into log
// batches, each decodable on its own, handed to emit (the log channel in a
// pair, a slice in tests). All methods run on the vCPU goroutine.
type Recorder struct {
	opts    RecorderOptions
	emit    func(batch []byte)
	enc     Encoder
	buf     []byte
	pending []Event // read during exit n's handler, before Exit(n)
	cur     uint64  // the last exit Exit was called for
	kind    uint8
	rip     func() uint64
	marked  bool // cur's ExitMark is in the log
	err     error
}

var _ vm.Recorder = (*Recorder)(nil)

// NewRecorder returns a recorder handing batches to emit. emit owns the
// batch it is given.
func NewRecorder(emit func(batch []byte), opts RecorderOptions) *Recorder {
	if opts.MarkEvery == 0 {
		opts.MarkEvery = 64
	}
	if opts.BatchBytes == 0 {
		opts.BatchBytes = 16 << 10
	}
	r := &Recorder{opts: opts, emit: emit}
	r.begin()
	return r
}

func (r *Recorder) begin() {
	r.buf = make([]byte, 0, r.opts.BatchBytes+1024)
	r.enc.Begin(r.buf)
}

// Err is the first encoding error; a recorder with an error stops logging,
// and its pair must resynchronise.
func (r *Recorder) Err() error { return r.err }

func (r *Recorder) append(ev Event) {
	if r.err != nil {
		return
	}
	if err := r.enc.Append(&ev); err != nil {
		r.err = fmt.Errorf("record %v at exit #%d: %w", ev.Type, ev.Exit, err)
		return
	}
	if r.enc.Len() >= r.opts.BatchBytes {
		r.Flush()
	}
}

// mark puts the current exit's ExitMark into the log once, before the
// first other entry at that exit.
func (r *Recorder) mark() {
	if !r.marked && r.cur > 0 {
		r.marked = true
		r.append(NewExitMark(r.cur, r.kind, r.rip()))
	}
}

// Exit implements vm.Recorder.
func (r *Recorder) Exit(n uint64, kind kvm.ExitKind, _ uint64, rip func() uint64) {
	r.cur, r.kind, r.rip, r.marked = n, uint8(kind), rip, false
	if len(r.pending) > 0 || n%r.opts.MarkEvery == 0 {
		r.mark()
	}
	for _, ev := range r.pending {
		r.append(ev)
	}
	r.pending = r.pending[:0]
}

// ClockRead implements vm.Recorder. Reads happen while exit n is handled,
// before Exit(n): they wait for the exit's mark.
func (r *Recorder) ClockRead(n uint64, v time.Duration) {
	ev := NewClockRead(n, int64(v))
	if n != r.cur {
		r.pending = append(r.pending, ev)
		return
	}
	r.mark()
	r.append(ev)
}

// TimerFired implements vm.Recorder.
func (r *Recorder) TimerFired(n uint64, timer int, now time.Duration) {
	r.mark()
	r.append(NewTimerFired(n, uint8(timer), int64(now)))
}

// Injected implements vm.Recorder.
func (r *Recorder) Injected(n uint64, vector uint8) {
	r.mark()
	r.append(NewInterruptInjected(n, vector))
}

// Kicked implements vm.Recorder.
func (r *Recorder) Kicked(n uint64) {
	r.mark()
	r.append(NewKick(n))
}

// Flush hands on the batch built so far, if any.
func (r *Recorder) Flush() {
	if r.enc.Len() <= 1 { // only the version byte
		return
	}
	r.emit(r.enc.Bytes())
	r.begin()
}

// Close marks the last exit, so a backup can tell it replayed everything,
// and flushes. Call it after the VM stopped and before it is closed: the
// mark may need the vCPU's RIP.
func (r *Recorder) Close() error {
	r.mark()
	r.Flush()
	return r.err
}
