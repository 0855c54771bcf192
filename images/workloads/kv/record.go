// Package kv is the guest's built-in key-value workload: an append-only,
// fsync'd log of PUT records (Store) and a line protocol over TCP (Server).
// It is small on purpose: tests and failover demos need a server whose
// every acknowledged write can be checked after a crash or a restart.
//
// # Log format
//
// kv.log is a sequence of records, each
//
//	length  uint32 LE   bytes in payload
//	crc     uint32 LE   CRC-32C (Castagnoli) of payload
//	payload:
//	  seq     uint64 LE  1 for the first record, +1 for each next one
//	  keylen  uint32 LE
//	  key     keylen bytes
//	  value   the rest of the payload
//
// A record is acknowledged (OK <seq>) only after its write and an fsync
// succeeded, so a crash can leave at most one incomplete record, at the
// tail; Open detects it (short read, bad checksum at the end of the file,
// or a zero-filled tail) and truncates it. Damage anywhere else is not a
// torn write but corruption, and Open refuses to guess.
package kv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	headerSize = 8
	// minPayload is seq + keylen: a payload shorter than this is corrupt.
	minPayload = 12
	// MaxPayload bounds one record, so a corrupt length cannot make the
	// reader allocate gigabytes. It is far above what a protocol line
	// (MaxLine) can carry.
	MaxPayload = 1 << 20
)

// Errors DecodeRecord wraps; tell them apart with errors.Is.
var (
	// ErrTruncated: the buffer ends inside the record (a torn tail if at
	// the end of the file).
	ErrTruncated = errors.New("record truncated")
	// ErrCorrupt: the record is complete but not valid (length out of
	// range, checksum mismatch, key length beyond the payload).
	ErrCorrupt = errors.New("record corrupt")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one PUT in the log.
type Record struct {
	Seq   uint64
	Key   []byte
	Value []byte
}

// EncodedSize is the number of bytes AppendRecord adds for r.
func (r Record) EncodedSize() int { return headerSize + minPayload + len(r.Key) + len(r.Value) }

// AppendRecord appends the encoding of r to b.
func AppendRecord(b []byte, r Record) []byte {
	n := minPayload + len(r.Key) + len(r.Value)
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	b = binary.LittleEndian.AppendUint32(b, 0) // crc, filled below
	b = binary.LittleEndian.AppendUint64(b, r.Seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Key)))
	b = append(b, r.Key...)
	b = append(b, r.Value...)
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[start+headerSize:], castagnoli))
	return b
}

// DecodeRecord decodes the record at the start of b and returns it with
// the number of bytes it occupies. Key and Value alias b. On error, n is
// the length the header claims (0 if even the header is incomplete), which
// lets a caller tell whether the damaged record reaches the end of the file.
func DecodeRecord(b []byte) (r Record, n int, err error) {
	if len(b) < headerSize {
		return Record{}, 0, fmt.Errorf("%w: %d header bytes of %d", ErrTruncated, len(b), headerSize)
	}
	plen := binary.LittleEndian.Uint32(b)
	if plen < minPayload || plen > MaxPayload {
		return Record{}, 0, fmt.Errorf("%w: payload length %d outside [%d, %d]", ErrCorrupt, plen, minPayload, MaxPayload)
	}
	n = headerSize + int(plen)
	if len(b) < n {
		return Record{}, n, fmt.Errorf("%w: %d of %d bytes", ErrTruncated, len(b), n)
	}
	payload := b[headerSize:n]
	if got, want := crc32.Checksum(payload, castagnoli), binary.LittleEndian.Uint32(b[4:]); got != want {
		return Record{}, n, fmt.Errorf("%w: checksum %08x, header says %08x", ErrCorrupt, got, want)
	}
	klen := binary.LittleEndian.Uint32(payload[8:])
	if uint64(klen) > uint64(len(payload)-minPayload) {
		return Record{}, n, fmt.Errorf("%w: key length %d exceeds payload", ErrCorrupt, klen)
	}
	rest := payload[minPayload:]
	return Record{
		Seq:   binary.LittleEndian.Uint64(payload),
		Key:   rest[:klen:klen],
		Value: rest[klen:],
	}, n, nil
}
