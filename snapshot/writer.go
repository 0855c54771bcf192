package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/bits"

	"github.com/ftvm/ftvm/hypervisor/vm"
)

const (
	magic   = "FTVMSNAP"
	version = 1

	headerSize = 12 // magic, version, kind, reserved
	recordHead = 5  // tag, payload length

	// PageSize is the unit of guest memory in a snapshot.
	PageSize = vm.DirtyPageSize
	// MaxRunPages bounds the pages of one pages record (1 MiB): the most
	// a decoder buffers at once.
	MaxRunPages = 256
)

// Record tags.
const (
	tagBase     = 1
	tagIdentity = 2
	tagMachine  = 3
	tagPages    = 4
	tagZeros    = 5
	tagEnd      = 6
)

// Kind says whether a snapshot holds all of memory or the pages written
// since a base.
type Kind uint8

const (
	// Full holds every non-zero page.
	Full Kind = 1
	// Delta holds the pages written since its base.
	Delta Kind = 2
)

func (k Kind) String() string {
	switch k {
	case Full:
		return "full"
	case Delta:
		return "delta"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Sum is a snapshot's SHA-256 (see the format): its name, by which a
// delta names its base.
type Sum [sha256.Size]byte

func (s Sum) String() string { return hex.EncodeToString(s[:]) }

// Meta is everything in a snapshot but its memory.
type Meta struct {
	Kind Kind
	// Base is a delta's base snapshot.
	Base     Sum
	Identity Identity
	State    vm.MachineState
}

// Writer encodes one snapshot as a stream: NewWriter writes everything but
// the memory, Memory (full) or Pages (delta) the memory straight from
// guest RAM (a page run at a time, through one reused buffer), Close the
// end record.
type Writer struct {
	w     io.Writer
	h     hash.Hash
	kind  Kind
	pages uint64 // memory size in pages
	err   error  // sticky: a failed write ends the snapshot
	head  [recordHead]byte
	// memoryDone: Memory or Pages ran (once per snapshot); finished:
	// Close ran.
	memoryDone, finished bool
	// scratch holds one page run while it is sent and hashed.
	scratch []byte
}

// NewWriter writes m's header, identity and machine records to w.
func NewWriter(w io.Writer, m *Meta) (*Writer, error) {
	if m.Kind != Full && m.Kind != Delta {
		return nil, fmt.Errorf("write snapshot: kind %v", m.Kind)
	}
	id, err := encodeIdentity(&m.Identity)
	if err != nil {
		return nil, fmt.Errorf("write snapshot: %w", err)
	}
	machine, err := encodeMachine(&m.State)
	if err != nil {
		return nil, fmt.Errorf("write snapshot: %w", err)
	}
	sw := &Writer{w: w, h: sha256.New(), kind: m.Kind, pages: uint64(m.Identity.MemoryMiB) << 20 / PageSize}
	hdr := append([]byte(magic), 0, 0, byte(m.Kind), 0)
	le.PutUint16(hdr[len(magic):], version)
	sw.write(hdr)
	if m.Kind == Delta {
		sw.record(tagBase, m.Base[:])
	}
	sw.record(tagIdentity, id)
	sw.record(tagMachine, machine)
	if sw.err != nil {
		return nil, sw.err
	}
	return sw, nil
}

// write sends p to the stream and the hash, once nothing has failed.
func (w *Writer) write(p []byte) {
	if w.err != nil {
		return
	}
	if _, err := w.w.Write(p); err != nil {
		w.err = fmt.Errorf("write snapshot: %w", err)
		return
	}
	w.h.Write(p)
}

func (w *Writer) recordHead(tag byte, n int) {
	w.head[0] = tag
	le.PutUint32(w.head[1:], uint32(n))
	w.write(w.head[:recordHead])
}

func (w *Writer) record(tag byte, payload []byte) {
	w.recordHead(tag, len(payload))
	w.write(payload)
}

// Memory writes every non-zero page of mem, which must be the identity's
// memory size (a full snapshot).
func (w *Writer) Memory(mem []byte) error {
	if err := w.checkMemory(Full, mem); err != nil {
		return err
	}
	w.memoryDone = true
	for p := uint64(0); p < w.pages; {
		if isZero(page(mem, p)) {
			p++
			continue
		}
		n := uint64(1)
		for n < MaxRunPages && p+n < w.pages && !isZero(page(mem, p+n)) {
			n++
		}
		w.pageRun(mem, p, n)
		p += n
	}
	return w.err
}

// Pages writes the pages of mem that bitmap marks (bit i of word i/64 is
// page i, as vm.DirtyPages returns them): the written ones as pages, the
// zero ones as zero runs (a delta). Marks beyond the memory are refused.
func (w *Writer) Pages(mem []byte, bitmap []uint64) error {
	if err := w.checkMemory(Delta, mem); err != nil {
		return err
	}
	for i, word := range bitmap {
		if word != 0 && uint64(i)*64+uint64(63-bits.LeadingZeros64(word)) >= w.pages {
			return fmt.Errorf("write snapshot: page bitmap marks pages beyond the memory's %d", w.pages)
		}
	}
	w.memoryDone = true
	marked := func(p uint64) bool { return p/64 < uint64(len(bitmap)) && bitmap[p/64]&(1<<(p%64)) != 0 }
	for p := uint64(0); p < w.pages; {
		if !marked(p) {
			p++
			continue
		}
		zero := isZero(page(mem, p))
		n := uint64(1)
		for p+n < w.pages && marked(p+n) && isZero(page(mem, p+n)) == zero && (zero || n < MaxRunPages) {
			n++
		}
		if zero {
			var z [8]byte
			le.PutUint32(z[:], uint32(p))
			le.PutUint32(z[4:], uint32(n))
			w.record(tagZeros, z[:])
		} else {
			w.pageRun(mem, p, n)
		}
		p += n
	}
	return w.err
}

func (w *Writer) checkMemory(kind Kind, mem []byte) error {
	switch {
	case w.err != nil:
		return w.err
	case w.finished:
		return errors.New("write snapshot: already closed")
	case w.kind != kind:
		return fmt.Errorf("write snapshot: a %v snapshot's memory written as %v", w.kind, kind)
	case uint64(len(mem)) != w.pages*PageSize:
		return fmt.Errorf("write snapshot: %d bytes of memory for a machine of %d", len(mem), w.pages*PageSize)
	case w.memoryDone:
		return errors.New("write snapshot: memory written twice")
	}
	return nil
}

// pageRun writes pages [p, p+n) in one record. The pages are copied
// once, and the copy both sent and hashed: a guest that runs while its
// memory is written (a pre-copy round) may change a page between two
// reads of it, and the Sum must cover the bytes sent.
func (w *Writer) pageRun(mem []byte, p, n uint64) {
	w.recordHead(tagPages, int(4+n*PageSize))
	var first [4]byte
	le.PutUint32(first[:], uint32(p))
	w.write(first[:])
	if w.scratch == nil {
		w.scratch = make([]byte, MaxRunPages*PageSize)
	}
	buf := w.scratch[:n*PageSize]
	copy(buf, mem[p*PageSize:(p+n)*PageSize])
	w.write(buf)
}

// Close writes the end record and returns the snapshot's Sum. It does not
// close the underlying writer.
func (w *Writer) Close() (Sum, error) {
	var s Sum
	if w.err != nil {
		return s, w.err
	}
	if w.finished {
		return s, errors.New("write snapshot: already closed")
	}
	w.recordHead(tagEnd, len(s))
	copy(s[:], w.h.Sum(nil))
	if _, err := w.w.Write(s[:]); err != nil && w.err == nil {
		w.err = fmt.Errorf("write snapshot: %w", err)
	}
	w.finished = true
	return s, w.err
}

func page(mem []byte, p uint64) []byte { return mem[p*PageSize : (p+1)*PageSize] }

// isZero reports whether a page is all zero, eight bytes at a time.
func isZero(p []byte) bool {
	for len(p) >= 8 {
		if le.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
