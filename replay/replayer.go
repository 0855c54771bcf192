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
// backup does something else. All methods run on the vCPU goroutine.
type Replayer struct {
	events []Event
	i      int
	last   uint64 // the last exit the log reaches
	mark   *Event // an ExitMark met before its exit was checked
}

var _ vm.Replayer = (*Replayer)(nil)

// NewReplayer decodes a whole recording (batches in order).
func NewReplayer(batches [][]byte) (*Replayer, error) {
	r := &Replayer{}
	var d Decoder
	for bi, b := range batches {
		if err := d.Reset(b); err != nil {
			return nil, fmt.Errorf("replay log batch %d: %w", bi, err)
		}
		for {
			var ev Event
			err := d.Next(&ev)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("replay log batch %d: %w", bi, err)
			}
			ev.Data = append([]byte(nil), ev.Data...) // Data aliases the batch
			r.events = append(r.events, ev)
			r.last = max(r.last, ev.Exit)
		}
	}
	return r, nil
}

// Len is the number of events in the log.
func (r *Replayer) Len() int { return len(r.events) }

func (r *Replayer) peek() *Event {
	if r.i < len(r.events) {
		return &r.events[r.i]
	}
	return nil
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
