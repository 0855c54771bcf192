package logchannel

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Wire format (all integers little-endian).
//
// Handshake ("hello"), sent by both sides once, before any frame:
//
//	magic[4]="FTLC" version[1] role[1] reserved[2]=0 session[8] generation[8] crc32c[4]
//
// Frame:
//
//	type[1] length[4] payload[length] crc32c[4]   (CRC over type, length and payload)
//
// Payloads:
//
//	batch:     firstSeq[8] count[4] then count × (len[4] bytes[len])
//	ack:       ackedThrough[8] replayedThrough[8]
//	heartbeat: sentAt[8] echoSentAt[8] echoHold[8]
//	close:     reason (UTF-8, at most MaxCloseReason bytes)
//
// Every field has exactly one encoding (fixed-width integers, no trailing
// bytes), so a frame the decoder accepts re-encodes to the same bytes.

const (
	// ProtocolVersion is the wire version this package speaks. A peer with a
	// different version is refused in the handshake.
	ProtocolVersion = 1

	// MaxEntrySize bounds one entry. It is a protocol constant (not a
	// setting) so both ends always agree on what a valid frame is.
	MaxEntrySize = 1 << 20
	// MaxFramePayload bounds one frame's payload; a batch holding one
	// maximal entry still fits.
	MaxFramePayload = 4 << 20
	// MaxCloseReason bounds the reason text of a close frame.
	MaxCloseReason = 1024

	helloSize       = 28
	frameHeaderSize = 5 // type + length
	frameTrailer    = 4 // crc
	batchHeaderSize = 12
	ackPayloadSize  = 16
	hbPayloadSize   = 24
)

var helloMagic = [4]byte{'F', 'T', 'L', 'C'}

// castagnoli is computed once; crc32.MakeTable returns a fresh table that
// is only read afterwards, so this is immutable state.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// FrameType identifies a frame on the wire.
type FrameType uint8

// Frame types.
const (
	FrameBatch     FrameType = 1
	FrameAck       FrameType = 2
	FrameHeartbeat FrameType = 3
	FrameClose     FrameType = 4
)

func (t FrameType) String() string {
	switch t {
	case FrameBatch:
		return "batch"
	case FrameAck:
		return "ack"
	case FrameHeartbeat:
		return "heartbeat"
	case FrameClose:
		return "close"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// Frame is the decoded form of one frame. Only the fields of its Type are
// meaningful; the decoder leaves the others zero.
type Frame struct {
	Type FrameType

	// Batch: entries FirstSeq, FirstSeq+1, ...
	FirstSeq uint64
	Entries  [][]byte

	// Ack: the receiver holds every entry through Acked and has replayed
	// every entry through Replayed.
	Acked    uint64
	Replayed uint64

	// Heartbeat: SentAt is the sender's clock (ns since its link start, never
	// 0); EchoSentAt is the SentAt of the last heartbeat it received (0 if
	// none) and EchoHold how long (ns) it held that before this reply, so
	// the peer can compute a round-trip time.
	SentAt     uint64
	EchoSentAt uint64
	EchoHold   uint64

	// Close: why the peer shut down.
	Reason string
}

// AppendFrame appends the wire encoding of f to dst.
func AppendFrame(dst []byte, f *Frame) ([]byte, error) {
	start := len(dst)
	dst = append(dst, byte(f.Type), 0, 0, 0, 0)
	switch f.Type {
	case FrameBatch:
		if f.FirstSeq == 0 {
			return dst[:start], fmt.Errorf("logchannel: encode batch: first seq 0 (sequences start at 1)")
		}
		if len(f.Entries) == 0 {
			return dst[:start], fmt.Errorf("logchannel: encode batch: no entries")
		}
		dst = binary.LittleEndian.AppendUint64(dst, f.FirstSeq)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(f.Entries)))
		for i, e := range f.Entries {
			if len(e) > MaxEntrySize {
				return dst[:start], fmt.Errorf("logchannel: encode batch: entry %d size %d exceeds MaxEntrySize %d", i, len(e), MaxEntrySize)
			}
			dst = appendEntry(dst, e)
		}
	case FrameAck:
		dst = binary.LittleEndian.AppendUint64(dst, f.Acked)
		dst = binary.LittleEndian.AppendUint64(dst, f.Replayed)
	case FrameHeartbeat:
		dst = binary.LittleEndian.AppendUint64(dst, f.SentAt)
		dst = binary.LittleEndian.AppendUint64(dst, f.EchoSentAt)
		dst = binary.LittleEndian.AppendUint64(dst, f.EchoHold)
	case FrameClose:
		if len(f.Reason) > MaxCloseReason {
			return dst[:start], fmt.Errorf("logchannel: encode close: reason length %d exceeds %d", len(f.Reason), MaxCloseReason)
		}
		dst = append(dst, f.Reason...)
	default:
		return dst[:start], fmt.Errorf("logchannel: encode: unknown frame type %d", f.Type)
	}
	n := len(dst) - start - frameHeaderSize
	if n > MaxFramePayload {
		return dst[:start], fmt.Errorf("logchannel: encode %v: payload length %d exceeds MaxFramePayload %d", f.Type, n, MaxFramePayload)
	}
	return sealFrame(dst, start), nil
}

func appendEntry(dst, e []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(e)))
	return append(dst, e...)
}

// sealFrame fills in the length of the frame starting at dst[start] and
// appends its CRC.
func sealFrame(dst []byte, start int) []byte {
	binary.LittleEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-frameHeaderSize))
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// errShort reports that DecodeFrame needs more bytes.
var errShort = fmt.Errorf("logchannel: short frame: %w", io.ErrUnexpectedEOF)

// crcError is a frame whose checksum does not match; the link layer adds
// the sequence position it happened at.
type crcError struct {
	typ       FrameType
	got, want uint32
}

func (e *crcError) Error() string {
	return fmt.Sprintf("CRC-32C mismatch in %v frame (got %08x, computed %08x)", e.typ, e.got, e.want)
}

// checkHeader validates a frame header before anything is allocated for it.
func checkHeader(h []byte) (FrameType, int, error) {
	t := FrameType(h[0])
	if t < FrameBatch || t > FrameClose {
		return 0, 0, fmt.Errorf("%w: unknown frame type 0x%02x", ErrCorrupt, h[0])
	}
	n := binary.LittleEndian.Uint32(h[1:5])
	if n > MaxFramePayload {
		return 0, 0, fmt.Errorf("%w: %v frame length %d exceeds MaxFramePayload %d", ErrCorrupt, t, n, MaxFramePayload)
	}
	return t, int(n), nil
}

// DecodeFrame decodes the frame at the start of b and returns it with the
// number of bytes it occupied. Batch entries alias b. It never allocates
// more than a small multiple of len(b).
func DecodeFrame(b []byte) (Frame, int, error) {
	if len(b) < frameHeaderSize {
		return Frame{}, 0, errShort
	}
	t, n, err := checkHeader(b)
	if err != nil {
		return Frame{}, 0, err
	}
	total := frameHeaderSize + n + frameTrailer
	if len(b) < total {
		return Frame{}, 0, errShort
	}
	if err := checkCRC(t, b[:total]); err != nil {
		return Frame{}, 0, err
	}
	f, err := decodePayload(t, b[frameHeaderSize:frameHeaderSize+n])
	return f, total, err
}

func checkCRC(t FrameType, frame []byte) error {
	body := frame[:len(frame)-frameTrailer]
	got := binary.LittleEndian.Uint32(frame[len(body):])
	if want := crc32.Checksum(body, castagnoli); got != want {
		return fmt.Errorf("%w: %w", ErrCorrupt, &crcError{typ: t, got: got, want: want})
	}
	return nil
}

func decodePayload(t FrameType, p []byte) (Frame, error) {
	f := Frame{Type: t}
	switch t {
	case FrameBatch:
		if len(p) < batchHeaderSize {
			return f, fmt.Errorf("%w: batch payload length %d shorter than header %d", ErrCorrupt, len(p), batchHeaderSize)
		}
		f.FirstSeq = binary.LittleEndian.Uint64(p)
		count := binary.LittleEndian.Uint32(p[8:])
		if f.FirstSeq == 0 {
			return Frame{}, fmt.Errorf("%w: batch first seq 0", ErrCorrupt)
		}
		// Each entry takes at least its 4-byte length, which bounds the
		// slice we allocate by the bytes actually present.
		if count == 0 || uint64(count) > uint64(len(p)-batchHeaderSize)/4 {
			return Frame{}, fmt.Errorf("%w: batch count %d does not fit payload length %d", ErrCorrupt, count, len(p))
		}
		if f.FirstSeq+uint64(count)-1 < f.FirstSeq {
			return Frame{}, fmt.Errorf("%w: batch first seq %d + count %d overflows", ErrCorrupt, f.FirstSeq, count)
		}
		rest := p[batchHeaderSize:]
		f.Entries = make([][]byte, count)
		for i := range f.Entries {
			if len(rest) < 4 {
				return Frame{}, fmt.Errorf("%w: batch entry %d (seq %d) length field truncated", ErrCorrupt, i, f.FirstSeq+uint64(i))
			}
			n := binary.LittleEndian.Uint32(rest)
			if n > MaxEntrySize {
				return Frame{}, fmt.Errorf("%w: batch entry %d (seq %d) length %d exceeds MaxEntrySize %d", ErrCorrupt, i, f.FirstSeq+uint64(i), n, MaxEntrySize)
			}
			if uint64(n) > uint64(len(rest)-4) {
				return Frame{}, fmt.Errorf("%w: batch entry %d (seq %d) length %d exceeds remaining payload %d", ErrCorrupt, i, f.FirstSeq+uint64(i), n, len(rest)-4)
			}
			f.Entries[i] = rest[4 : 4+n : 4+n]
			rest = rest[4+n:]
		}
		if len(rest) != 0 {
			return Frame{}, fmt.Errorf("%w: batch has %d trailing bytes after %d entries", ErrCorrupt, len(rest), count)
		}
	case FrameAck:
		if len(p) != ackPayloadSize {
			return Frame{}, fmt.Errorf("%w: ack payload length %d, want %d", ErrCorrupt, len(p), ackPayloadSize)
		}
		f.Acked = binary.LittleEndian.Uint64(p)
		f.Replayed = binary.LittleEndian.Uint64(p[8:])
		if f.Replayed > f.Acked {
			return Frame{}, fmt.Errorf("%w: ack replayed %d beyond acked %d", ErrCorrupt, f.Replayed, f.Acked)
		}
	case FrameHeartbeat:
		if len(p) != hbPayloadSize {
			return Frame{}, fmt.Errorf("%w: heartbeat payload length %d, want %d", ErrCorrupt, len(p), hbPayloadSize)
		}
		f.SentAt = binary.LittleEndian.Uint64(p)
		f.EchoSentAt = binary.LittleEndian.Uint64(p[8:])
		f.EchoHold = binary.LittleEndian.Uint64(p[16:])
	case FrameClose:
		if len(p) > MaxCloseReason {
			return Frame{}, fmt.Errorf("%w: close reason length %d exceeds MaxCloseReason %d", ErrCorrupt, len(p), MaxCloseReason)
		}
		f.Reason = string(p)
	}
	return f, nil
}

// readFrame reads one frame from br. The payload buffer is freshly
// allocated (at most MaxFramePayload, checked before allocation), so batch
// entries may be handed to the consumer without copying.
func readFrame(br *bufio.Reader) (Frame, int, error) {
	h, err := br.Peek(frameHeaderSize)
	if err != nil {
		if errors.Is(err, io.EOF) && len(h) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, 0, err
	}
	t, n, err := checkHeader(h)
	if err != nil {
		return Frame{}, 0, err
	}
	buf := make([]byte, frameHeaderSize+n+frameTrailer)
	if _, err := io.ReadFull(br, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, 0, err
	}
	if err := checkCRC(t, buf); err != nil {
		return Frame{}, 0, err
	}
	f, err := decodePayload(t, buf[frameHeaderSize:frameHeaderSize+n])
	return f, len(buf), err
}

// Role says which end of a log channel a process is.
type Role uint8

// Roles.
const (
	RoleSender   Role = 1 // the primary: appends entries
	RoleReceiver Role = 2 // the backup: receives, acks and replays entries
)

func (r Role) String() string {
	switch r {
	case RoleSender:
		return "sender(primary)"
	case RoleReceiver:
		return "receiver(backup)"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Hello is the handshake each side sends before any frame.
type Hello struct {
	Version    uint8
	Role       Role
	Session    uint64
	Generation uint64
}

// AppendHello appends the wire encoding of h.
func AppendHello(dst []byte, h Hello) []byte {
	start := len(dst)
	dst = append(dst, helloMagic[:]...)
	dst = append(dst, h.Version, byte(h.Role), 0, 0)
	dst = binary.LittleEndian.AppendUint64(dst, h.Session)
	dst = binary.LittleEndian.AppendUint64(dst, h.Generation)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// checkHelloPrefix checks magic and version, the part of a hello every
// version shares. They are checked before length and checksum so that a
// peer speaking another version gets a version error whatever that
// version's layout is.
func checkHelloPrefix(b []byte) error {
	if len(b) < 5 {
		return fmt.Errorf("%w: hello truncated at %d bytes", ErrHandshake, len(b))
	}
	if [4]byte(b[:4]) != helloMagic {
		return fmt.Errorf("%w: bad magic %q, want %q (not a logchannel peer?)", ErrHandshake, b[:4], helloMagic[:])
	}
	if b[4] != ProtocolVersion {
		return fmt.Errorf("%w: peer speaks protocol version %d, this end speaks %d", ErrVersion, b[4], ProtocolVersion)
	}
	return nil
}

// DecodeHello parses a handshake.
func DecodeHello(b []byte) (Hello, error) {
	if err := checkHelloPrefix(b); err != nil {
		return Hello{}, err
	}
	if len(b) != helloSize {
		return Hello{}, fmt.Errorf("%w: hello length %d, want %d", ErrHandshake, len(b), helloSize)
	}
	if got, want := binary.LittleEndian.Uint32(b[24:]), crc32.Checksum(b[:24], castagnoli); got != want {
		return Hello{}, fmt.Errorf("%w: hello CRC-32C mismatch (got %08x, computed %08x)", ErrHandshake, got, want)
	}
	if b[6] != 0 || b[7] != 0 {
		return Hello{}, fmt.Errorf("%w: hello reserved bytes %02x%02x not zero", ErrHandshake, b[6], b[7])
	}
	return Hello{
		Version:    b[4],
		Role:       Role(b[5]),
		Session:    binary.LittleEndian.Uint64(b[8:]),
		Generation: binary.LittleEndian.Uint64(b[16:]),
	}, nil
}
