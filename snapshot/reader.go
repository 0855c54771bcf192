package snapshot

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Reader decodes one snapshot from a stream of untrusted bytes: NewReader
// reads everything but the memory, Next the memory a run of pages at a
// time, the last call verifying the Sum.
type Reader struct {
	r     io.Reader
	h     hash.Hash
	meta  Meta
	pages uint64 // memory size in pages
	next  uint64 // lowest page the next run may name
	buf   []byte // the current record's payload, reused
	sum   Sum
	done  bool
	err   error // sticky
}

// Run is a run of consecutive pages from a snapshot.
type Run struct {
	First uint64 // page number
	Count uint64
	// Data holds the Count pages, valid until the next call to Next; nil
	// for pages that are zero now (deltas only).
	Data []byte
}

// NewReader reads a snapshot's header, identity and machine records from
// r. It reads nothing beyond them.
func NewReader(r io.Reader) (*Reader, error) {
	sr := &Reader{r: r, h: sha256.New()}
	if err := sr.readMeta(); err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	return sr, nil
}

func (r *Reader) readMeta() error {
	var hdr [headerSize]byte
	if err := r.read(hdr[:]); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	if string(hdr[:len(magic)]) != magic {
		return fmt.Errorf("not a snapshot: magic %q, want %q", hdr[:len(magic)], magic)
	}
	if v := le.Uint16(hdr[len(magic):]); v != version {
		return fmt.Errorf("format version %d, this build reads version %d", v, version)
	}
	r.meta.Kind = Kind(hdr[len(magic)+2])
	if r.meta.Kind != Full && r.meta.Kind != Delta {
		return fmt.Errorf("unknown kind %d", hdr[len(magic)+2])
	}
	if hdr[len(magic)+3] != 0 {
		return fmt.Errorf("reserved header byte %#x, must be 0", hdr[len(magic)+3])
	}
	if r.meta.Kind == Delta {
		p, err := r.record(tagBase, len(Sum{}))
		if err != nil {
			return err
		}
		if len(p) != len(Sum{}) {
			return fmt.Errorf("base record of %d bytes, want %d", len(p), len(Sum{}))
		}
		copy(r.meta.Base[:], p)
	}
	p, err := r.record(tagIdentity, 64<<10)
	if err != nil {
		return err
	}
	if r.meta.Identity, err = decodeIdentity(p); err != nil {
		return err
	}
	r.pages = uint64(r.meta.Identity.MemoryMiB) << 20 / PageSize
	if p, err = r.record(tagMachine, maxMachine); err != nil {
		return err
	}
	r.meta.State, err = decodeMachine(p)
	return err
}

// read fills p from the stream and hashes it.
func (r *Reader) read(p []byte) error {
	if _, err := io.ReadFull(r.r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	r.h.Write(p)
	return nil
}

// recordHead reads a record's tag and payload length, refusing a length
// beyond max before anything is allocated.
func (r *Reader) recordHead(max int) (tag byte, n int, err error) {
	var head [recordHead]byte
	if err := r.read(head[:]); err != nil {
		return 0, 0, fmt.Errorf("record header: %w", err)
	}
	n64 := uint64(le.Uint32(head[1:]))
	if n64 > uint64(max) {
		return 0, 0, fmt.Errorf("record %d of %d bytes, at most %d here", head[0], n64, max)
	}
	return head[0], int(n64), nil
}

// payload reads n bytes into the reused buffer.
func (r *Reader) payload(n int) ([]byte, error) {
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	p := r.buf[:n]
	if err := r.read(p); err != nil {
		return nil, fmt.Errorf("record payload of %d bytes: %w", n, err)
	}
	return p, nil
}

// record reads a record that must have tag want.
func (r *Reader) record(want byte, max int) ([]byte, error) {
	tag, n, err := r.recordHead(max)
	if err != nil {
		return nil, err
	}
	if tag != want {
		return nil, fmt.Errorf("record %d where record %d belongs", tag, want)
	}
	return r.payload(n)
}

// Meta is everything in the snapshot but its memory. The caller must not
// change it.
func (r *Reader) Meta() *Meta { return &r.meta }

// maxPagesRecord bounds a pages record's payload.
const maxPagesRecord = 4 + MaxRunPages*PageSize

// Next returns the next run of pages. After the last one it reads the end
// record and returns io.EOF if the snapshot's Sum verifies, an error
// otherwise: what Next returned before belongs to a snapshot that is not
// whole or not what was written, and must be thrown away.
func (r *Reader) Next() (Run, error) {
	if r.err != nil {
		return Run{}, r.err
	}
	if r.done {
		return Run{}, io.EOF
	}
	run, err := r.next1()
	if err != nil {
		r.err = fmt.Errorf("read snapshot memory: %w", err)
		return Run{}, r.err
	}
	return run, nil
}

func (r *Reader) next1() (Run, error) {
	tag, n, err := r.recordHead(maxPagesRecord)
	if err != nil {
		return Run{}, err
	}
	switch tag {
	case tagPages:
		if n < 4+PageSize || (n-4)%PageSize != 0 {
			return Run{}, fmt.Errorf("pages record of %d bytes is not a page number and whole pages", n)
		}
		p, err := r.payload(n)
		if err != nil {
			return Run{}, err
		}
		run := Run{First: uint64(le.Uint32(p)), Count: uint64(n-4) / PageSize, Data: p[4:]}
		return run, r.claim(run)
	case tagZeros:
		if r.meta.Kind != Delta {
			return Run{}, errors.New("a zero-pages record in a full snapshot")
		}
		if n != 8 {
			return Run{}, fmt.Errorf("zero-pages record of %d bytes, want 8", n)
		}
		p, err := r.payload(n)
		if err != nil {
			return Run{}, err
		}
		run := Run{First: uint64(le.Uint32(p)), Count: uint64(le.Uint32(p[4:]))}
		if run.Count == 0 {
			return Run{}, fmt.Errorf("zero-pages record at page %d names no page", run.First)
		}
		return run, r.claim(run)
	case tagEnd:
		if n != len(Sum{}) {
			return Run{}, fmt.Errorf("end record of %d bytes, want %d", n, len(Sum{}))
		}
		want := r.h.Sum(nil)
		var got Sum
		if _, err := io.ReadFull(r.r, got[:]); err != nil {
			return Run{}, fmt.Errorf("end record: %w", io.ErrUnexpectedEOF)
		}
		if !bytes.Equal(got[:], want) {
			return Run{}, fmt.Errorf("checksum mismatch: the end record says %v, the bytes before it hash to %x", got, want)
		}
		r.sum, r.done = got, true
		return Run{}, io.EOF
	}
	return Run{}, fmt.Errorf("record %d where pages or the end belong", tag)
}

// claim checks that run lies inside memory after everything named so far.
func (r *Reader) claim(run Run) error {
	if run.First < r.next {
		return fmt.Errorf("page %d named after page %d: pages must ascend, each once", run.First, r.next-1)
	}
	if run.First >= r.pages || run.Count > r.pages-run.First {
		return fmt.Errorf("pages %d..%d beyond the memory's %d", run.First, run.First+run.Count-1, r.pages)
	}
	r.next = run.First + run.Count
	return nil
}

// Sum is the snapshot's Sum, once Next has returned io.EOF.
func (r *Reader) Sum() (Sum, bool) { return r.sum, r.done }

// LoadMemory reads the rest of the snapshot into mem (the identity's
// memory size) and verifies its Sum. A full snapshot makes mem exactly its
// memory (pages it does not name become zero); a delta changes only the
// pages it names, so mem must hold its base. On an error mem is partly
// loaded and must be thrown away.
func (r *Reader) LoadMemory(mem []byte) error {
	if uint64(len(mem)) != r.pages*PageSize {
		return fmt.Errorf("load snapshot memory: %d bytes of memory for a machine of %d", len(mem), r.pages*PageSize)
	}
	var cursor uint64 // full: pages below it are loaded
	for {
		run, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w (the memory is partly loaded: discard it)", err)
		}
		if r.meta.Kind == Full {
			zeroPages(mem, cursor, run.First)
			cursor = run.First + run.Count
		}
		dst := mem[run.First*PageSize : (run.First+run.Count)*PageSize]
		if run.Data == nil {
			clear(dst)
		} else {
			copy(dst, run.Data)
		}
	}
	if r.meta.Kind == Full {
		zeroPages(mem, cursor, r.pages)
	}
	return nil
}

// zeroPages clears pages [from, to) that are not zero already: reading a
// page of fresh anonymous memory maps the shared zero page, writing it
// would allocate one.
func zeroPages(mem []byte, from, to uint64) {
	for p := from; p < to; p++ {
		if pg := page(mem, p); !isZero(pg) {
			clear(pg)
		}
	}
}
