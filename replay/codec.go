package replay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Version is the first byte of every batch. Bump it when the encoding of an
// existing type changes; a decoder refuses versions it does not know rather
// than misreading a log. Version 2 added CheckpointChunk, which a version 1
// decoder would refuse as an unknown type in the middle of a log.
const Version = 2

// Wire format of a batch (all integers unsigned LEB128 "uvarint", minimal
// length; zigzag(x) = x<<1 ^ x>>63 for signed deltas):
//
//	batch  = Version entry*
//	entry  = type:byte exitDelta:uvarint fields
//
// exitDelta is Exit minus the previous entry's Exit in the same batch (the
// first entry's is against 0, so every batch decodes on its own). Fields
// per type:
//
//	ExitMark           kind:byte zigzag(RIP - prevRIP)
//	ClockRead          zigzag(Value - prevTime)
//	TimerFired         device:byte zigzag(Value - prevTime)
//	InterruptInjected  vector:byte
//	ConsoleInput       len:uvarint data
//	FrameReceived      device:byte len:uvarint data
//	DiskRead           device:byte offset:uvarint len:uvarint data
//	DiskDone           device:byte status:byte
//	Kick               (nothing)
//	StateDigest        regs:32 memory:32
//	Output             kind:byte device:byte hash:32
//	CheckpointCPU      len:uvarint data
//	CheckpointPage     page:uvarint len:uvarint data   (page = Value/PageSize)
//	CheckpointZero     page:uvarint
//	CheckpointChunk    len:uvarint chunk              (pagechunk.go)
//
// prevRIP is the RIP of the batch's previous ExitMark and prevTime the
// Value of its previous ClockRead or TimerFired, both 0 at the batch start.
// The deltas are why an idle guest's entries are 2-4 bytes: kernel RIPs
// are 0xffffffff8xxxxxxx (10 bytes as a plain uvarint) but close to each
// other, and clock reads are microseconds apart.
//
// There is no entry count or checksum: the log channel frames each batch
// with its length and a checksum.

// Encoder appends events to a batch. Reusing one Encoder and its buffer,
// appending does not allocate once the buffer has grown to the batch size.
// It is not safe for concurrent use.
type Encoder struct {
	buf      []byte
	prevExit uint64 // delta base, reset per batch
	prevRIP  uint64
	prevTime int64
	last     uint64 // across batches, for the ordering check
	any      bool   // an event was ever appended
}

// Begin starts a batch that is appended to buf[:0] (nil allocates), ending
// any batch in progress. The ordering check carries over: a batch may not
// start below the previous batch's last exit.
func (e *Encoder) Begin(buf []byte) {
	e.buf = append(buf[:0], Version)
	e.prevExit, e.prevRIP, e.prevTime = 0, 0, 0
}

// Bytes is the batch so far; it aliases the Encoder's buffer.
func (e *Encoder) Bytes() []byte { return e.buf }

// Len is the batch's size in bytes so far.
func (e *Encoder) Len() int { return len(e.buf) }

// Append encodes ev at the end of the batch. An invalid event (see the
// field table of Event and the Max* bounds) or one whose exit is below the
// previous event's is refused, and the batch is left unchanged.
func (e *Encoder) Append(ev *Event) error {
	if e.buf == nil {
		return errors.New("replay: Encoder.Append before Begin")
	}
	if err := ev.validate(); err != nil {
		return err
	}
	if e.any && ev.Exit < e.last {
		return fmt.Errorf("%v at exit %d after an event at exit %d: exit numbers must not go backwards", ev.Type, ev.Exit, e.last)
	}
	b := e.buf
	b = append(b, byte(ev.Type))
	b = binary.AppendUvarint(b, ev.Exit-e.prevExit)
	switch ev.Type {
	case ExitMark:
		b = append(b, ev.Kind)
		b = binary.AppendUvarint(b, zigzag(int64(ev.RIP-e.prevRIP)))
		e.prevRIP = ev.RIP
	case ClockRead:
		b = binary.AppendUvarint(b, zigzag(ev.Value-e.prevTime))
		e.prevTime = ev.Value
	case TimerFired:
		b = append(b, ev.Device)
		b = binary.AppendUvarint(b, zigzag(ev.Value-e.prevTime))
		e.prevTime = ev.Value
	case InterruptInjected:
		b = append(b, ev.Kind)
	case ConsoleInput:
		b = binary.AppendUvarint(b, uint64(len(ev.Data)))
		b = append(b, ev.Data...)
	case FrameReceived:
		b = append(b, ev.Device)
		b = binary.AppendUvarint(b, uint64(len(ev.Data)))
		b = append(b, ev.Data...)
	case DiskRead:
		b = append(b, ev.Device)
		b = binary.AppendUvarint(b, uint64(ev.Value))
		b = binary.AppendUvarint(b, uint64(len(ev.Data)))
		b = append(b, ev.Data...)
	case DiskDone:
		b = append(b, ev.Device, ev.Kind)
	case Kick:
	case CheckpointCPU, CheckpointChunk:
		b = binary.AppendUvarint(b, uint64(len(ev.Data)))
		b = append(b, ev.Data...)
	case CheckpointPage:
		b = binary.AppendUvarint(b, uint64(ev.Value/PageSize))
		b = binary.AppendUvarint(b, uint64(len(ev.Data)))
		b = append(b, ev.Data...)
	case CheckpointZero:
		b = binary.AppendUvarint(b, uint64(ev.Value/PageSize))
	case StateDigest:
		b = append(b, ev.Regs[:]...)
		b = append(b, ev.Memory[:]...)
	case Output:
		b = append(b, ev.Kind, ev.Device)
		b = append(b, ev.Hash[:]...)
	}
	e.buf = b
	e.prevExit, e.last, e.any = ev.Exit, ev.Exit, true
	return nil
}

// FormatError reports undecodable bytes, with the batch offset of the entry
// (or field) at fault.
type FormatError struct {
	Offset int
	Msg    string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("replay log: offset %d: %s", e.Offset, e.Msg)
}

// Decoder reads the events of batches of untrusted bytes. It never
// allocates for payloads (Event.Data aliases the batch) and checks every
// length against the remaining bytes and the Max* bounds before using it,
// so garbage costs neither memory nor a panic. It accepts exactly the
// canonical encodings Encoder produces: a decoded batch re-encodes to the
// same bytes. It is not safe for concurrent use.
type Decoder struct {
	buf      []byte
	off      int
	prevExit uint64
	prevRIP  uint64
	prevTime int64
	last     uint64
	any      bool
	err      error
}

// Reset starts decoding batch, checking its version byte. Like Encoder, the
// exit ordering check carries over from the previous batch.
func (d *Decoder) Reset(batch []byte) error {
	d.buf, d.off, d.err = batch, 0, nil
	d.prevExit, d.prevRIP, d.prevTime = 0, 0, 0
	switch {
	case len(batch) == 0:
		d.err = &FormatError{0, "empty batch: no version byte"}
	case batch[0] != Version:
		d.err = &FormatError{0, fmt.Sprintf("batch version %d, this decoder reads version %d", batch[0], Version)}
	default:
		d.off = 1
	}
	return d.err
}

// Next decodes the next event into ev. It returns io.EOF at the end of the
// batch; any other error is a *FormatError (or, for an event that decodes
// but is invalid, an error wrapping the event's problem with its offset),
// and is returned again by every later call.
func (d *Decoder) Next(ev *Event) error {
	if d.err != nil {
		return d.err
	}
	if d.buf == nil {
		return errors.New("replay: Decoder.Next before Reset")
	}
	if d.off == len(d.buf) {
		return io.EOF
	}
	start := d.off
	if err := d.next(ev, start); err != nil {
		d.err = err
		return err
	}
	return nil
}

func (d *Decoder) next(ev *Event, start int) error {
	*ev = Event{Type: Type(d.buf[d.off])}
	d.off++
	if fieldsOf(ev.Type) == 0 {
		return &FormatError{start, fmt.Sprintf("unknown event type %d", uint8(ev.Type))}
	}
	delta, err := d.uvarint(ev.Type, "exit delta")
	if err != nil {
		return err
	}
	ev.Exit = d.prevExit + delta
	if ev.Exit < d.prevExit || (d.any && ev.Exit < d.last) {
		prev := d.last
		if ev.Exit < d.prevExit {
			prev = d.prevExit
		}
		return &FormatError{start, fmt.Sprintf("%v at exit %d after an event at exit %d: exit numbers go backwards", ev.Type, ev.Exit, prev)}
	}
	switch ev.Type {
	case ExitMark:
		if ev.Kind, err = d.byte(ev.Type, "exit kind"); err != nil {
			return err
		}
		z, err := d.uvarint(ev.Type, "RIP delta")
		if err != nil {
			return err
		}
		ev.RIP = d.prevRIP + uint64(unzigzag(z))
	case ClockRead, TimerFired:
		if ev.Type == TimerFired {
			if ev.Device, err = d.byte(ev.Type, "timer"); err != nil {
				return err
			}
		}
		z, err := d.uvarint(ev.Type, "time delta")
		if err != nil {
			return err
		}
		ev.Value = d.prevTime + unzigzag(z) // a wrap lands negative: validate refuses it
	case InterruptInjected:
		if ev.Kind, err = d.byte(ev.Type, "vector"); err != nil {
			return err
		}
	case ConsoleInput:
		if ev.Data, err = d.payload(ev.Type); err != nil {
			return err
		}
	case FrameReceived:
		if ev.Device, err = d.byte(ev.Type, "device"); err != nil {
			return err
		}
		if ev.Data, err = d.payload(ev.Type); err != nil {
			return err
		}
	case DiskRead:
		if ev.Device, err = d.byte(ev.Type, "device"); err != nil {
			return err
		}
		off, err := d.uvarint(ev.Type, "offset")
		if err != nil {
			return err
		}
		ev.Value = int64(off) // above MaxInt64 lands negative: validate refuses it
		if ev.Data, err = d.payload(ev.Type); err != nil {
			return err
		}
	case DiskDone:
		if ev.Device, err = d.byte(ev.Type, "device"); err != nil {
			return err
		}
		if ev.Kind, err = d.byte(ev.Type, "status"); err != nil {
			return err
		}
	case Kick:
	case CheckpointCPU, CheckpointChunk:
		if ev.Data, err = d.payload(ev.Type); err != nil {
			return err
		}
	case CheckpointPage, CheckpointZero:
		page, err := d.uvarint(ev.Type, "page number")
		if err != nil {
			return err
		}
		if page > math.MaxInt64/PageSize {
			return &FormatError{start, fmt.Sprintf("%v page number %d out of range", ev.Type, page)}
		}
		ev.Value = int64(page) * PageSize
		if ev.Type == CheckpointPage {
			if ev.Data, err = d.payload(ev.Type); err != nil {
				return err
			}
		}
	case StateDigest:
		if err := d.fixed(ev.Type, ev.Regs[:], "register digest"); err != nil {
			return err
		}
		if err := d.fixed(ev.Type, ev.Memory[:], "memory digest"); err != nil {
			return err
		}
	case Output:
		if ev.Kind, err = d.byte(ev.Type, "output kind"); err != nil {
			return err
		}
		if ev.Device, err = d.byte(ev.Type, "device"); err != nil {
			return err
		}
		if err := d.fixed(ev.Type, ev.Hash[:], "hash"); err != nil {
			return err
		}
	}
	if err := ev.validate(); err != nil {
		return &FormatError{start, err.Error()}
	}
	switch ev.Type {
	case ExitMark:
		d.prevRIP = ev.RIP
	case ClockRead, TimerFired:
		d.prevTime = ev.Value
	}
	d.prevExit, d.last, d.any = ev.Exit, ev.Exit, true
	return nil
}

func (d *Decoder) truncated(t Type, what string) error {
	return &FormatError{d.off, fmt.Sprintf("%v entry truncated in its %s", t, what)}
}

func (d *Decoder) byte(t Type, what string) (uint8, error) {
	if d.off >= len(d.buf) {
		return 0, d.truncated(t, what)
	}
	b := d.buf[d.off]
	d.off++
	return b, nil
}

func (d *Decoder) fixed(t Type, dst []byte, what string) error {
	if len(d.buf)-d.off < len(dst) {
		return d.truncated(t, what)
	}
	d.off += copy(dst, d.buf[d.off:])
	return nil
}

// uvarint reads a minimal-length uvarint. binary.Uvarint accepts padded
// forms (0x80 0x00 for 0), which would let two byte strings decode to the
// same events; refusing them keeps decode-then-encode the identity.
func (d *Decoder) uvarint(t Type, what string) (uint64, error) {
	start := d.off
	var x uint64
	for i := uint(0); ; i++ {
		if d.off >= len(d.buf) {
			return 0, d.truncated(t, what)
		}
		b := d.buf[d.off]
		d.off++
		if i == binary.MaxVarintLen64-1 && b > 1 {
			return 0, &FormatError{start, fmt.Sprintf("%v %s overflows 64 bits", t, what)}
		}
		if b < 0x80 {
			if i > 0 && b == 0 {
				return 0, &FormatError{start, fmt.Sprintf("%v %s is not minimally encoded", t, what)}
			}
			return x | uint64(b)<<(7*i), nil
		}
		x |= uint64(b&0x7f) << (7 * i)
	}
}

// payload reads a length-prefixed payload, bounding the length by the
// type's limit before comparing it with what is left, and returns a
// subslice of the batch (no copy, no allocation).
func (d *Decoder) payload(t Type) ([]byte, error) {
	start := d.off
	n, err := d.uvarint(t, "payload length")
	if err != nil {
		return nil, err
	}
	if limit := maxData(t); n == 0 || n > uint64(limit) {
		return nil, &FormatError{start, fmt.Sprintf("%v payload length %d outside 1..%d", t, n, limit)}
	}
	if uint64(len(d.buf)-d.off) < n {
		return nil, d.truncated(t, "payload")
	}
	p := d.buf[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return p, nil
}

func zigzag(x int64) uint64 { return uint64(x<<1) ^ uint64(x>>63) }

func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

// DecodeBatch decodes a whole batch into a new slice; the events' Data
// alias batch. For tests and tools; the replayer streams with a Decoder.
func DecodeBatch(batch []byte) ([]Event, error) {
	var d Decoder
	if err := d.Reset(batch); err != nil {
		return nil, err
	}
	var evs []Event
	for {
		var ev Event
		switch err := d.Next(&ev); {
		case err == io.EOF:
			return evs, nil
		case err != nil:
			return evs, err
		}
		evs = append(evs, ev)
	}
}
