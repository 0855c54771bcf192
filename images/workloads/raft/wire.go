package raft

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformed is wrapped by every decoder in this package: the bytes are
// not a valid encoding (truncated, a length beyond the input, an unknown
// kind, trailing garbage).
var ErrMalformed = errors.New("malformed raft encoding")

// MaxMessage bounds one encoded message or persisted state, so a corrupt
// length cannot make a decoder allocate without limit.
const MaxMessage = 64 << 20

// The encodings here are uvarints and length-prefixed byte strings; they
// are shared by RPC messages and the persisted state.

func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendInt(b []byte, v int) []byte {
	// Indices and peer ids are never below -1 (votedFor's "none"); a
	// zigzag varint keeps -1 one byte.
	return binary.AppendVarint(b, int64(v))
}

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// decoder reads what the append functions wrote. The first error sticks;
// later reads return zero values, so a caller checks err once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("%s: bad uvarint", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// int reads a varint in [min, 2^52]: indices and peer ids, far below the
// bound, which only keeps a corrupt value from overflowing int arithmetic.
func (d *decoder) int(what string, min int) int {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("%s: bad varint", what)
		return 0
	}
	d.b = d.b[n:]
	if v < int64(min) || v > 1<<52 {
		d.fail("%s %d out of range", what, v)
		return 0
	}
	return int(v)
}

func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("%s: length %d, %d bytes left", what, n, len(d.b))
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) bool(what string) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) == 0 {
		d.fail("%s: missing", what)
		return false
	}
	v := d.b[0]
	d.b = d.b[1:]
	if v > 1 {
		d.fail("%s: byte %d is not a bool", what, v)
	}
	return v == 1
}

func (d *decoder) byte(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("%s: missing", what)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// done reports the sticky error, or trailing bytes as one.
func (d *decoder) done() error {
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

func appendEntries(b []byte, es []Entry) []byte {
	b = appendUvarint(b, uint64(len(es)))
	for _, e := range es {
		b = appendUvarint(b, e.Term)
		b = appendBytes(b, e.Command)
	}
	return b
}

func (d *decoder) entries() []Entry {
	n := d.uvarint("entry count")
	// Each entry takes at least two bytes, which bounds n by the input
	// before anything is allocated.
	if d.err == nil && n > uint64(len(d.b))/2 {
		d.fail("%d entries in %d bytes", n, len(d.b))
	}
	if d.err != nil || n == 0 {
		return nil
	}
	es := make([]Entry, n)
	for i := range es {
		es[i].Term = d.uvarint("entry term")
		es[i].Command = d.bytes("entry command")
	}
	return es
}
