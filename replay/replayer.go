package replay

import (
	"errors"
	"fmt"
	"io"
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

	next  func() ([]byte, error) // the stream; nil for a whole log
	ended bool                   // no more batches will come
	err   error                  // a broken or garbled stream
}

var _ vm.Replayer = (*Replayer)(nil)

// NewReplayer decodes a whole recording (batches in order).
func NewReplayer(batches [][]byte) (*Replayer, error) {
	r := &Replayer{ended: true}
	for bi, b := range batches {
		if err := r.decode(b); err != nil {
			return nil, fmt.Errorf("replay log batch %d: %w", bi, err)
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

func (r *Replayer) decode(b []byte) error {
	if err := r.dec.Reset(b); err != nil {
		return err
	}
	for {
		var ev Event
		err := r.dec.Next(&ev)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		ev.Data = append([]byte(nil), ev.Data...) // Data aliases the batch
		r.events = append(r.events, ev)
		r.last = max(r.last, ev.Exit)
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
		r.err = fmt.Errorf("replay log: %w", err)
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
		r.i++
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
	if ev := r.peek(); ev != nil && ev.Exit == n && ev.Type == ClockRead {
		return errors.New("the primary read the clock more times at this exit")
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
		// between runs, so its RIP is not compared.
		if kind != kvm.ExitIRQWindowOpen {
			if got := rip(); got != m.RIP {
				return fmt.Errorf("RIP %#x, the primary's was %#x", got, m.RIP)
			}
		}
	}
	return nil
}

// ClockRead implements vm.Replayer.
func (r *Replayer) ClockRead(n uint64) (time.Duration, error) {
	r.skipMark(n)
	ev := r.peek()
	if ev == nil || ev.Type != ClockRead || ev.Exit != n {
		return 0, fmt.Errorf("a device read the clock; the log has %s next", describe(ev))
	}
	r.i++
	return time.Duration(ev.Value), nil
}

// NextTimer implements vm.Replayer.
func (r *Replayer) NextTimer(n uint64) (int, time.Duration, bool, error) {
	ev := r.peek()
	switch {
	case ev == nil || ev.Exit > n:
		return 0, 0, false, nil
	case ev.Exit < n:
		return 0, 0, false, fmt.Errorf("the primary logged %v at exit #%d, which the backup passed", ev.Type, ev.Exit)
	case ev.Type == Kick:
		return 0, 0, false, fmt.Errorf("the primary was kicked after exit #%d: replay cannot follow, the pair must resynchronise", n)
	case ev.Type != TimerFired:
		return 0, 0, false, nil
	}
	r.i++
	return int(ev.Device), time.Duration(ev.Value), true, nil
}

// Injected implements vm.Replayer.
func (r *Replayer) Injected(n uint64, vector uint8) error {
	ev := r.peek()
	if ev == nil || ev.Type != InterruptInjected || ev.Exit != n {
		return fmt.Errorf("the backup injected vector %#x; the log has %s next", vector, describe(ev))
	}
	r.i++
	if ev.Kind != vector {
		return fmt.Errorf("the backup injected vector %#x, the primary %#x", vector, ev.Kind)
	}
	return nil
}

func describe(ev *Event) string {
	if ev == nil {
		return "nothing more"
	}
	return fmt.Sprintf("%v at exit #%d", ev.Type, ev.Exit)
}
