package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
)

// MaxIO is the most data one read or write request carries; the client
// splits larger ones.
const MaxIO = 1 << 20

// maxFrame bounds a frame's body: a full write plus its header, with room.
const maxFrame = MaxIO + 1024

// maxMessage bounds an error message or a damaged record's reason on the wire.
const maxMessage = 2048

// Request operations.
const (
	opInfo   byte = 1 // pair, disk, gen -> size, id, record
	opRead   byte = 2 // pair, disk, off, len -> data
	opWrite  byte = 3 // pair, disk, gen, off, data
	opFlush  byte = 4 // pair, disk, gen
	opClaim  byte = 5 // pair, owner, seen -> record
	opRecord byte = 6 // pair -> record
)

var opNames = map[byte]string{opInfo: "info", opRead: "read", opWrite: "write", opFlush: "flush", opClaim: "claim", opRecord: "record"}

// Reply status codes: 0 is success; the others name the error kind, which
// the client turns back into the same sentinel the server matched.
const (
	codeOK byte = iota
	codeBadRequest
	codeNotFound
	codeOutOfRange
	codeFenced
	codeLostClaim
	codeUnreachable
	codeAhead
	codeInvalid
	codeInternal
	codeMax
)

// request is one decoded request. name is the disk, or the owner of a claim.
type request struct {
	op   byte
	tag  uint32
	pair string
	name string
	gen  uint64 // writer's generation, or the claim's seen generation
	off  uint64
	n    uint32 // read length
	data []byte // write data, aliasing the frame
}

// reply is one decoded reply. On error, msg says what, gen carries the
// writer's generation (fenced) or the claim's seen one (lost), and rec
// the record that decided.
type reply struct {
	tag    uint32
	status byte
	size   uint64
	id     string
	rec    arbiter.Record
	data   []byte
	msg    string
	gen    uint64
}

// ErrBadRequest: the server could not decode or would not accept a request.
var ErrBadRequest = errors.New("bad storage request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// readFrame reads one frame's body into buf (grown as needed).
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxFrame {
		return nil, badRequest("frame of %d bytes (allowed 1 to %d)", n, maxFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// frameStart begins a frame in buf: room for the length, filled by frameEnd.
func frameStart(buf []byte) []byte { return append(buf[:0], 0, 0, 0, 0) }

func frameEnd(b []byte) []byte {
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// appendStr8 writes a string of at most 255 bytes; every caller's strings
// are validated shorter (names, owners, IDs), and the cut only keeps a
// caller's bug from desynchronizing the stream.
func appendStr8(b []byte, s string) []byte {
	if len(s) > 255 {
		s = s[:255]
	}
	return append(append(b, byte(len(s))), s...)
}

func appendStr16(b []byte, s string) []byte {
	if len(s) > maxMessage {
		s = s[:maxMessage]
	}
	return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
}

// encodeRequest appends req as a whole frame to buf.
func encodeRequest(buf []byte, req *request) []byte {
	b := frameStart(buf)
	b = append(b, req.op)
	b = binary.BigEndian.AppendUint32(b, req.tag)
	b = appendStr8(b, req.pair)
	switch req.op {
	case opInfo, opFlush, opClaim:
		b = appendStr8(b, req.name)
		b = binary.BigEndian.AppendUint64(b, req.gen)
	case opRead:
		b = appendStr8(b, req.name)
		b = binary.BigEndian.AppendUint64(b, req.off)
		b = binary.BigEndian.AppendUint32(b, req.n)
	case opWrite:
		b = appendStr8(b, req.name)
		b = binary.BigEndian.AppendUint64(b, req.gen)
		b = binary.BigEndian.AppendUint64(b, req.off)
		b = append(b, req.data...)
	}
	return frameEnd(b)
}

// decoder reads fields from a frame body; the first short read sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = badRequest("message cut short")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) str8() string  { return string(d.take(int(d.u8()))) }
func (d *decoder) str16() string { return string(d.take(int(d.u16()))) }

// end fails if bytes are left over.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = badRequest("%d bytes after the message", len(d.b))
	}
	return d.err
}

// decodeRequest parses and checks a request body (a frame without its
// length). The returned request's data aliases body. Names are checked
// here; offsets against the disk's size by the server.
func decodeRequest(body []byte) (*request, error) {
	d := &decoder{b: body}
	req := &request{op: d.u8(), tag: d.u32()}
	if d.err != nil {
		return req, d.err
	}
	if _, ok := opNames[req.op]; !ok {
		return req, badRequest("unknown operation %d", req.op)
	}
	req.pair = d.str8()
	switch req.op {
	case opInfo, opFlush, opClaim:
		req.name = d.str8()
		req.gen = d.u64()
	case opRead:
		req.name = d.str8()
		req.off = d.u64()
		req.n = d.u32()
	case opWrite:
		req.name = d.str8()
		req.gen = d.u64()
		req.off = d.u64()
		if d.err == nil {
			req.data, d.b = d.b, nil
		}
	}
	if err := d.end(); err != nil {
		return req, err
	}
	if err := arbiter.ValidatePair(req.pair); err != nil {
		return req, badRequest("%v", err)
	}
	switch req.op {
	case opClaim:
		if err := arbiter.ValidateOwner(req.name); err != nil {
			return req, badRequest("%v", err)
		}
	case opInfo, opRead, opWrite, opFlush:
		if err := storage.ValidateName(req.name); err != nil {
			return req, badRequest("disk: %v", err)
		}
	}
	switch {
	case req.op == opRead && (req.n == 0 || req.n > MaxIO):
		return req, badRequest("read of %d bytes (allowed 1 to %d)", req.n, MaxIO)
	case req.op == opWrite && (len(req.data) == 0 || len(req.data) > MaxIO):
		return req, badRequest("write of %d bytes (allowed 1 to %d)", len(req.data), MaxIO)
	case (req.op == opRead || req.op == opWrite) && req.off > uint64(storage.MaxSize):
		return req, badRequest("offset %d beyond any disk", req.off)
	}
	return req, nil
}

func appendRecord(b []byte, r arbiter.Record) []byte {
	b = appendStr8(b, r.Pair)
	b = binary.BigEndian.AppendUint64(b, r.Generation)
	b = appendStr8(b, r.Owner)
	var claimed int64
	if !r.Claimed.IsZero() {
		claimed = r.Claimed.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(claimed))
	return appendStr16(b, r.Damaged)
}

func (d *decoder) record() arbiter.Record {
	r := arbiter.Record{Pair: d.str8(), Generation: d.u64(), Owner: d.str8()}
	if ns := int64(d.u64()); ns != 0 {
		r.Claimed = time.Unix(0, ns).UTC()
	}
	r.Damaged = d.str16()
	return r
}

// encodeReply appends rep as a whole frame to buf; op says which payload
// a success carries.
func encodeReply(buf []byte, op byte, rep *reply) []byte {
	b := frameStart(buf)
	b = binary.BigEndian.AppendUint32(b, rep.tag)
	b = append(b, rep.status)
	if rep.status != codeOK {
		b = appendStr16(b, rep.msg)
		b = binary.BigEndian.AppendUint64(b, rep.gen)
		return frameEnd(appendRecord(b, rep.rec))
	}
	switch op {
	case opInfo:
		b = binary.BigEndian.AppendUint64(b, rep.size)
		b = appendStr8(b, rep.id)
		b = appendRecord(b, rep.rec)
	case opRead:
		b = append(b, rep.data...)
	case opClaim, opRecord:
		b = appendRecord(b, rep.rec)
	}
	return frameEnd(b)
}

// decodeReply parses a reply body to a request of kind op. A read's data
// aliases body.
func decodeReply(body []byte, op byte) (*reply, error) {
	d := &decoder{b: body}
	rep := &reply{tag: d.u32(), status: d.u8()}
	switch {
	case d.err != nil:
	case rep.status >= codeMax:
		return nil, fmt.Errorf("reply status %d unknown", rep.status)
	case rep.status != codeOK:
		rep.msg = d.str16()
		rep.gen = d.u64()
		rep.rec = d.record()
	case op == opInfo:
		rep.size = d.u64()
		rep.id = d.str8()
		rep.rec = d.record()
	case op == opRead:
		rep.data, d.b = d.b, nil
	case op == opClaim || op == opRecord:
		rep.rec = d.record()
	}
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("reply: %w", err)
	}
	return rep, nil
}
