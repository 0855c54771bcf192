package replication

import (
	"bytes"
	"strings"
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

// TestKeptFramesResentUnlessReleased: the frames of released entries are
// dropped; the rest are sent again in the order the guest sent them.
func TestKeptFramesResentUnlessReleased(t *testing.T) {
	var k keptWrites
	frame := []byte("frame-a")
	k.keepFrame(2, frame)
	frame[0] = 'X' // the kept copy must not alias the NIC's buffer
	k.keepFrame(4, []byte("frame-b"))
	k.keepFrame(6, []byte("frame-c"))
	k.released(4)
	var sent []string
	if n := k.resend(func(f []byte) { sent = append(sent, string(f)) }); n != 1 || len(sent) != 1 || sent[0] != "frame-c" {
		t.Fatalf("after released(4): resent %d %q, want frame-c", n, sent)
	}
	var k2 keptWrites
	k2.keepFrame(1, []byte("one"))
	k2.keepFrame(1, []byte("two"))
	sent = nil
	k2.resend(func(f []byte) { sent = append(sent, string(f)) })
	if strings.Join(sent, ",") != "one,two" {
		t.Fatalf("resent %q, want one,two in order", sent)
	}
	k3 := keptWrites{}
	k3.keepFrame(1, frame)
	frame[0] = 'Y'
	if string(k3.frames[0].data) != "Xrame-a" {
		t.Fatal("keepFrame did not copy")
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
