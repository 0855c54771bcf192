package arbiter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"time"
)

// The stored form of a record (a generation file, an etcd value) is one
// JSON line followed by a line "crc32c XXXXXXXX" over the JSON line's
// bytes. The checksum tells a record cut short or scribbled over (a torn
// write, a bad sector) from a valid one, so a damaged record reads as
// "claimed, owner unreadable", never as something else.

// maxRecordBytes bounds what decodeRecord accepts; a real record is under
// 400 bytes.
const maxRecordBytes = 4096

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type storedRecord struct {
	Pair       string    `json:"pair"`
	Generation uint64    `json:"generation"`
	Owner      string    `json:"owner"`
	Claimed    time.Time `json:"claimed"`
}

func encodeRecord(r Record) ([]byte, error) {
	b, err := json.Marshal(storedRecord{Pair: r.Pair, Generation: r.Generation, Owner: r.Owner, Claimed: r.Claimed.UTC()})
	if err != nil {
		return nil, fmt.Errorf("encode arbiter record: %w", err)
	}
	return fmt.Appendf(b, "\ncrc32c %08x\n", crc32.Checksum(b, crcTable)), nil
}

// decodeRecord parses a stored record and checks it is the one expected:
// the pair and generation its place (file name, key version) says.
func decodeRecord(data []byte, pair string, generation uint64) (Record, error) {
	if len(data) > maxRecordBytes {
		return Record{}, fmt.Errorf("record is %d bytes, more than %d", len(data), maxRecordBytes)
	}
	body, tail, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		return Record{}, errors.New("record has no checksum line (cut short?)")
	}
	sum, ok := bytes.CutPrefix(tail, []byte("crc32c "))
	sum, ok2 := bytes.CutSuffix(sum, []byte("\n"))
	if !ok || !ok2 || len(sum) != 8 {
		return Record{}, errors.New("record's checksum line is malformed (cut short?)")
	}
	want, err := strconv.ParseUint(string(sum), 16, 32)
	if err != nil {
		return Record{}, fmt.Errorf("record's checksum %q is not hexadecimal", sum)
	}
	if got := crc32.Checksum(body, crcTable); uint32(want) != got {
		return Record{}, fmt.Errorf("record's checksum is %08x but its content sums to %08x", want, got)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var s storedRecord
	if err := dec.Decode(&s); err != nil {
		return Record{}, fmt.Errorf("parse record: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Record{}, errors.New("parse record: trailing data")
	}
	switch {
	case s.Pair != pair:
		return Record{}, fmt.Errorf("record names pair %q, expected %q", s.Pair, pair)
	case s.Generation != generation:
		return Record{}, fmt.Errorf("record says generation %d where %d is stored", s.Generation, generation)
	}
	if err := ValidateOwner(s.Owner); err != nil {
		return Record{}, fmt.Errorf("record's owner: %w", err)
	}
	return Record{Pair: s.Pair, Generation: s.Generation, Owner: s.Owner, Claimed: s.Claimed}, nil
}
