package replication

import (
	"bytes"
	"testing"
)

func TestReleasedEntry(t *testing.T) {
	b := encodeReleased(0x0102030405060708)
	if !isReleased(b) {
		t.Fatal("not recognized")
	}
	if seq, err := decodeReleased(b); err != nil || seq != 0x0102030405060708 {
		t.Fatalf("decode: %d %v", seq, err)
	}
	for _, bad := range [][]byte{{releasedTag}, append(bytes.Clone(b), 0), {1, 0, 0, 0, 0, 0, 0, 0, 0}} {
		if _, err := decodeReleased(bad); err == nil {
			t.Errorf("decoded %x", bad)
		}
	}
	if isReleased([]byte{1}) || isReleased([]byte("{")) || isReleased(nil) {
		t.Error("a replay batch or the start header taken for a released entry")
	}
}

// TestKeptWritesDropOnlyReleased: a released entry drops the writes of
// entries up to it and keeps the rest in order.
func TestKeptWritesDropOnlyReleased(t *testing.T) {
	var k keptWrites
	p := []byte("abcd")
	k.keep(3, 0, 0, p)
	p[0] = 'X' // the kept copy must not alias the guest's buffer
	k.keep(5, 0, 512, []byte("efgh"))
	k.keep(5, 1, 0, []byte("ijkl"))
	k.keep(9, 0, 0, []byte("mnop"))
	k.released(4)
	if len(k.writes) != 3 || k.writes[0].seq != 5 || k.bytes != 12 {
		t.Fatalf("after released(4): %+v (%d bytes)", k.writes, k.bytes)
	}
	k.released(5)
	if len(k.writes) != 1 || string(k.writes[0].data) != "mnop" || k.bytes != 4 {
		t.Fatalf("after released(5): %+v", k.writes)
	}
	var k2 keptWrites
	k2.keep(1, 0, 0, p[:1])
	if string(k2.writes[0].data) != "X" {
		t.Fatal("keep did not copy")
	}
}

func FuzzDecodeReleased(f *testing.F) {
	f.Add(encodeReleased(7))
	f.Add([]byte{releasedTag})
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, err := decodeReleased(b)
		if err == nil && !bytes.Equal(encodeReleased(seq), b) {
			t.Fatalf("%x decoded to %d, which encodes differently", b, seq)
		}
	})
}
