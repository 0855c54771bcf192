package network

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestFrameReaderRoundTrip(t *testing.T) {
	frames := [][]byte{
		bytes.Repeat([]byte{1}, MinFrameSize),
		bytes.Repeat([]byte{2}, 1514),
		bytes.Repeat([]byte{3}, MaxFrameSize),
	}
	var stream []byte
	for _, f := range frames {
		stream = AppendFrame(stream, f)
	}
	fr := NewFrameReader(bytes.NewReader(stream))
	for i, want := range frames {
		got, err := fr.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if _, err := fr.Next(); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
}

func TestFrameReaderErrors(t *testing.T) {
	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	cases := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"oversize", hdr(MaxFrameSize + 1), ErrFrameTooLarge},
		{"huge", hdr(0xffffffff), ErrFrameTooLarge},
		{"zero", hdr(0), ErrFrameTooShort},
		{"runt", append(hdr(13), make([]byte, 13)...), ErrFrameTooShort},
		{"truncated header", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"truncated frame", append(hdr(100), make([]byte, 99)...), io.ErrUnexpectedEOF},
		{"header only", hdr(60), io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		_, err := NewFrameReader(bytes.NewReader(c.stream)).Next()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
}

// FuzzFrameReader feeds arbitrary streams to the decoder: it must never
// panic or return an out-of-bounds frame, must stop at the first error, and
// what it decodes must re-encode to exactly the bytes it consumed.
func FuzzFrameReader(f *testing.F) {
	f.Add(AppendFrame(nil, make([]byte, 60)))
	f.Add(AppendFrame(AppendFrame(nil, make([]byte, 14)), bytes.Repeat([]byte{0xab}, 1514)))
	f.Add([]byte{0, 1, 0, 14})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		fr := NewFrameReader(r)
		var reencoded []byte
		for {
			frame, err := fr.Next()
			if err == io.EOF {
				if !bytes.Equal(reencoded, data) {
					t.Fatalf("clean EOF but decoded frames do not re-encode to the input")
				}
				return
			}
			if err != nil {
				if !errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrFrameTooShort) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				consumed := len(data) - r.Len()
				if !bytes.HasPrefix(data[:consumed], reencoded) {
					t.Fatalf("decoded frames are not a prefix of the input")
				}
				return
			}
			if len(frame) < MinFrameSize || len(frame) > MaxFrameSize {
				t.Fatalf("frame of %d bytes returned", len(frame))
			}
			reencoded = AppendFrame(reencoded, frame)
			if !bytes.HasPrefix(data, reencoded) {
				t.Fatalf("frame does not match the input bytes")
			}
		}
	})
}
