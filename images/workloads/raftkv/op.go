package raftkv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// ErrMalformed is wrapped by the decoders of this package.
var ErrMalformed = errors.New("malformed raftkv encoding")

// OpKind says what an Op does.
type OpKind byte

// Op kinds start at 0x40 so that a request on a shared port is told apart
// from a Raft message (kinds 1-6) by its first byte.
const (
	OpGet OpKind = 0x40 + iota
	OpPut
	OpAppend
)

func (k OpKind) String() string {
	switch k {
	case OpGet:
		return "Get"
	case OpPut:
		return "Put"
	case OpAppend:
		return "Append"
	}
	return fmt.Sprintf("OpKind(%#x)", byte(k))
}

// Op is a client request and, unchanged, the command in the Raft log.
// (ClientID, Seq) identifies it: a clerk has one request outstanding and
// numbers them 1, 2, ..., so the state machine executes a Put or Append
// only if its Seq is above the last one it executed for that client.
type Op struct {
	Kind     OpKind
	ClientID uint64
	Seq      uint64
	Key      string
	Value    string
}

// MaxOp bounds an encoded op (and reply), far above what tests and the
// demos send.
const MaxOp = 1 << 20

func (op Op) encode() []byte {
	b := []byte{byte(op.Kind)}
	b = binary.AppendUvarint(b, op.ClientID)
	b = binary.AppendUvarint(b, op.Seq)
	b = appendString(b, op.Key)
	return appendString(b, op.Value)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// reader decodes uvarints and strings; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) failf(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.failf("%s: bad uvarint", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string(what string) string {
	n := r.uvarint(what + " length")
	if r.err == nil && n > uint64(len(r.b)) {
		r.failf("%s: length %d, %d bytes left", what, n, len(r.b))
	}
	if r.err != nil {
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *reader) end() error {
	if r.err == nil && len(r.b) > 0 {
		r.failf("%d trailing bytes", len(r.b))
	}
	return r.err
}

func decodeOp(b []byte) (Op, error) {
	if len(b) == 0 || len(b) > MaxOp {
		return Op{}, fmt.Errorf("%w: op of %d bytes", ErrMalformed, len(b))
	}
	op := Op{Kind: OpKind(b[0])}
	if op.Kind < OpGet || op.Kind > OpAppend {
		return Op{}, fmt.Errorf("%w: op kind %#x", ErrMalformed, b[0])
	}
	r := reader{b: b[1:]}
	op.ClientID = r.uvarint("client id")
	op.Seq = r.uvarint("seq")
	op.Key = r.string("key")
	op.Value = r.string("value")
	if err := r.end(); err != nil {
		return Op{}, fmt.Errorf("decode op: %w", err)
	}
	return op, nil
}

// Status is a server's answer to an op.
type Status byte

const (
	StatusOK Status = iota
	// StatusWrongLeader: this server does not lead (or lost its term
	// before the op committed); try another.
	StatusWrongLeader
	// StatusTimeout: the op did not commit in time; it may still. Retry
	// (the same Seq, so it executes once).
	StatusTimeout
	statusEnd
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "OK"
	case StatusWrongLeader:
		return "WrongLeader"
	case StatusTimeout:
		return "Timeout"
	}
	return fmt.Sprintf("Status(%d)", byte(s))
}

type reply struct {
	Status Status
	Value  string // Get's result ("" for a missing key)
}

func (r reply) encode() []byte { return appendString([]byte{byte(r.Status)}, r.Value) }

func decodeReply(b []byte) (reply, error) {
	if len(b) == 0 || len(b) > MaxOp || Status(b[0]) >= statusEnd {
		return reply{}, fmt.Errorf("%w: reply of %d bytes", ErrMalformed, len(b))
	}
	r := reader{b: b[1:]}
	rep := reply{Status: Status(b[0]), Value: r.string("value")}
	if err := r.end(); err != nil {
		return reply{}, fmt.Errorf("decode reply: %w", err)
	}
	return rep, nil
}

// state is the replicated state machine: the map and, per client, the
// Seq of the last Put or Append it executed. A snapshot holds both, so a
// retried request stays deduplicated across compaction and restarts.
type state struct {
	data    map[string]string
	lastSeq map[uint64]uint64
}

func newState() *state {
	return &state{data: map[string]string{}, lastSeq: map[uint64]uint64{}}
}

// apply executes op and returns Get's value.
func (s *state) apply(op Op) string {
	if op.Kind != OpGet && op.Seq > s.lastSeq[op.ClientID] {
		if op.Kind == OpPut {
			s.data[op.Key] = op.Value
		} else {
			s.data[op.Key] += op.Value
		}
		s.lastSeq[op.ClientID] = op.Seq
	}
	return s.data[op.Key]
}

const snapshotVersion = 1

// encode writes the state in sorted order, so equal states give equal
// snapshots.
func (s *state) encode() []byte {
	b := []byte{snapshotVersion}
	b = binary.AppendUvarint(b, uint64(len(s.data)))
	for _, k := range slices.Sorted(maps.Keys(s.data)) {
		b = appendString(appendString(b, k), s.data[k])
	}
	b = binary.AppendUvarint(b, uint64(len(s.lastSeq)))
	for _, c := range slices.Sorted(maps.Keys(s.lastSeq)) {
		b = binary.AppendUvarint(binary.AppendUvarint(b, c), s.lastSeq[c])
	}
	return b
}

func decodeState(b []byte) (*state, error) {
	if len(b) == 0 || b[0] != snapshotVersion {
		return nil, fmt.Errorf("%w: snapshot without version %d", ErrMalformed, snapshotVersion)
	}
	r := reader{b: b[1:]}
	s := newState()
	// Every entry takes at least two bytes: a count beyond that is
	// rejected before the loop, whatever the input claims.
	n := r.uvarint("key count")
	if r.err == nil && n > uint64(len(r.b))/2 {
		r.failf("%d keys in %d bytes", n, len(r.b))
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		k := r.string("key")
		s.data[k] = r.string("value")
	}
	n = r.uvarint("client count")
	if r.err == nil && n > uint64(len(r.b))/2 {
		r.failf("%d clients in %d bytes", n, len(r.b))
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		c := r.uvarint("client")
		s.lastSeq[c] = r.uvarint("seq")
	}
	if err := r.end(); err != nil {
		return nil, fmt.Errorf("decode kv snapshot: %w", err)
	}
	return s, nil
}
