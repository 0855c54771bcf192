package kvmhost

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

func encodeFrame(t testing.TB, ft frameType, msg any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := (&frameWriter{w: &buf}).send(ft, msg); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestFrameLayout(t *testing.T) {
	got := encodeFrame(t, frameShutdown, struct{}{})
	// 'F' 'T', type 5, length 2, "{}", CRC-32C over type+length+payload.
	want := []byte{'F', 'T', 5, 0, 0, 0, 2, '{', '}'}
	if !bytes.Equal(got[:len(want)], want) || len(got) != len(want)+4 {
		t.Fatalf("frame = % x, want prefix % x and a 4-byte CRC", got, want)
	}
}

func TestFrameReaderResynchronises(t *testing.T) {
	exec := execMsg{ID: 7, Argv: []string{"uname", "-r"}, TimeoutMS: 1000}
	good := encodeFrame(t, frameExec, exec)
	corrupt := append([]byte(nil), good...)
	corrupt[10] ^= 0xff // payload byte: CRC must catch it
	var stream []byte
	stream = append(stream, "kernel noise FT\x00F"...)
	stream = append(stream, corrupt...)
	stream = append(stream, 'F')
	stream = append(stream, good...)
	fr := newFrameReader(bytes.NewReader(stream))
	ft, payload, err := fr.next()
	if err != nil {
		t.Fatal(err)
	}
	var got execMsg
	if err := json.Unmarshal(payload, &got); err != nil {
		t.Fatal(err)
	}
	if ft != frameExec || got.ID != 7 || got.Argv[1] != "-r" {
		t.Fatalf("got %v %+v", ft, got)
	}
	if fr.skipped == 0 {
		t.Fatal("garbage was not counted as skipped")
	}
	if _, _, err := fr.next(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("after the last frame: err = %v, want EOF", err)
	}
}

func TestFrameWriterRejectsHugePayload(t *testing.T) {
	err := (&frameWriter{w: io.Discard}).sendRaw(frameOutput, make([]byte, maxPayload+1))
	if err == nil {
		t.Fatal("oversized frame accepted")
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(encodeFrame(f, frameHello, helloMsg{Kernel: "6.1", KVM: true}))
	f.Add(append([]byte("FTxx"), encodeFrame(f, frameOutput, outputMsg{ID: 1, Stream: 1, Data: []byte("hi")})...))
	f.Add([]byte("FT\x03\x00\x40\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := newFrameReader(bytes.NewReader(data))
		for i := 0; ; i++ {
			ft, payload, err := fr.next()
			if err != nil {
				return
			}
			if i > len(data) {
				t.Fatal("more frames than input bytes")
			}
			// Anything accepted re-encodes to a frame that reads back the same.
			var buf bytes.Buffer
			if err := (&frameWriter{w: &buf}).sendRaw(ft, payload); err != nil {
				t.Fatal(err)
			}
			ft2, payload2, err := newFrameReader(&buf).next()
			if err != nil || ft2 != ft || !bytes.Equal(payload, payload2) {
				t.Fatalf("re-encoded frame differs: %v %v", ft2, err)
			}
		}
	})
}
