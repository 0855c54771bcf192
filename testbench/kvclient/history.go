package kvclient

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Op is one request of a run as the client saw it: what it asked, when it
// sent the request and when the answer came, and the answer. An op whose
// connection failed before the answer has Unknown set: the server may or
// may not have carried it out.
type Op struct {
	Client int
	Kind   string // "PUT", "GET" or "ECHO"
	Key    string // PUT and GET
	Value  string // PUT: the value written; ECHO: the text sent
	// Call and Return are offsets from the history's start on one
	// monotonic clock. Return is zero when Unknown.
	Call, Return time.Duration
	Answer       string // the reply line, without its newline
	Unknown      bool   // no answer: the request failed (connection lost) or the run ended first
	Err          string // Unknown: why
}

// Wait is how long the op waited for its answer (0 when Unknown).
func (o Op) Wait() time.Duration {
	if o.Unknown {
		return 0
	}
	return o.Return - o.Call
}

// History records the ops of a run; its methods are safe for concurrent
// use by the clients of one run.
type History struct {
	start time.Time // carries the monotonic reading all offsets count from

	mu  sync.Mutex
	ops []Op
}

// NewHistory starts a history whose clock starts now.
func NewHistory() *History { return &History{start: time.Now()} }

// Start is when the history's clock started.
func (h *History) Start() time.Time { return h.start }

// now is the offset of this instant on the history's monotonic clock.
func (h *History) now() time.Duration { return time.Since(h.start) }

// At is the wall-clock instant of an offset: the start's wall clock plus
// the monotonic offset, so instants never go backwards within a history.
func (h *History) At(offset time.Duration) time.Time { return h.start.Add(offset) }

func (h *History) add(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Ops returns a copy of the ops recorded so far, in the order they ended.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

// Longest is the answered op that waited longest for its answer (ok false
// when none was answered).
func (h *History) Longest() (op Op, ok bool) {
	for _, o := range h.Ops() {
		if !o.Unknown && (!ok || o.Wait() > op.Wait()) {
			op, ok = o, true
		}
	}
	return op, ok
}

// opLine is an op's JSON line. Times are Unix nanoseconds (the history's
// start plus the monotonic offset), so they compare with timestamps taken
// elsewhere on the same host, such as the moment a process was killed.
type opLine struct {
	Client       int    `json:"client"`
	Op           string `json:"op"`
	Key          string `json:"key,omitempty"`
	Value        string `json:"value,omitempty"`
	CallUnixNs   int64  `json:"call_unix_ns"`
	ReturnUnixNs int64  `json:"return_unix_ns,omitempty"`
	Answer       string `json:"answer,omitempty"`
	Unknown      bool   `json:"unknown,omitempty"`
	Error        string `json:"error,omitempty"`
}

// WriteJSONLines writes the history as JSON lines, one op a line in the
// order the ops were invoked.
func (h *History) WriteJSONLines(w io.Writer) error {
	ops := h.Ops()
	slices.SortStableFunc(ops, func(a, b Op) int { return int(a.Call - b.Call) })
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for _, o := range ops {
		l := opLine{Client: o.Client, Op: o.Kind, Key: o.Key, Value: o.Value,
			CallUnixNs: h.At(o.Call).UnixNano(), Answer: o.Answer, Unknown: o.Unknown, Error: o.Err}
		if !o.Unknown {
			l.ReturnUnixNs = h.At(o.Return).UnixNano()
		}
		if err := enc.Encode(l); err != nil {
			return fmt.Errorf("write history: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write history: %w", err)
	}
	return nil
}
