package server

import (
	"bytes"
	"testing"
	"time"

	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
)

func TestRequestRoundTrip(t *testing.T) {
	for _, req := range []request{
		{op: opInfo, tag: 1, pair: "kv", name: "vda", gen: 3},
		{op: opRead, tag: 2, pair: "kv", name: "vda", off: 4096, n: 512},
		{op: opWrite, tag: 3, pair: "kv", name: "vda", gen: 3, off: 512, data: []byte("data")},
		{op: opFlush, tag: 4, pair: "kv", name: "vda", gen: 3},
		{op: opClaim, tag: 5, pair: "kv", name: "backup host b", gen: 2},
		{op: opRecord, tag: 6, pair: "kv"},
	} {
		frame := encodeRequest(nil, &req)
		got, err := decodeRequest(frame[4:])
		if err != nil {
			t.Fatalf("%s: %v", opNames[req.op], err)
		}
		if got.op != req.op || got.tag != req.tag || got.pair != req.pair || got.name != req.name ||
			got.gen != req.gen || got.off != req.off || got.n != req.n || !bytes.Equal(got.data, req.data) {
			t.Fatalf("%s: %+v came back as %+v", opNames[req.op], req, got)
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	rec := arbiter.Record{Pair: "kv", Generation: 4, Owner: "backup", Claimed: time.Unix(5, 6).UTC()}
	for _, tc := range []struct {
		op  byte
		rep reply
	}{
		{opInfo, reply{tag: 1, size: 1 << 30, id: "ftvm-0123", rec: rec}},
		{opRead, reply{tag: 2, data: []byte("abc")}},
		{opWrite, reply{tag: 3}},
		{opClaim, reply{tag: 4, rec: rec}},
		{opWrite, reply{tag: 5, status: codeFenced, msg: "fenced", gen: 3, rec: rec}},
		{opClaim, reply{tag: 6, status: codeLostClaim, msg: "lost", gen: 3, rec: arbiter.Record{Pair: "kv", Generation: 4, Damaged: "torn"}}},
	} {
		frame := encodeReply(nil, tc.op, &tc.rep)
		got, err := decodeReply(frame[4:], tc.op)
		if err != nil {
			t.Fatalf("%+v: %v", tc.rep, err)
		}
		if got.tag != tc.rep.tag || got.status != tc.rep.status || got.size != tc.rep.size || got.id != tc.rep.id ||
			got.rec != tc.rep.rec || !bytes.Equal(got.data, tc.rep.data) || got.msg != tc.rep.msg || got.gen != tc.rep.gen {
			t.Fatalf("%+v came back as %+v", tc.rep, got)
		}
	}
}

// FuzzDecodeRequest: any body decodes to an error or to a request within
// every bound the server relies on, and re-encodes to the same bytes.
func FuzzDecodeRequest(f *testing.F) {
	for _, req := range []request{
		{op: opWrite, tag: 3, pair: "kv", name: "vda", gen: 3, off: 512, data: []byte("data")},
		{op: opRead, tag: 2, pair: "kv", name: "vda", off: 4096, n: 512},
		{op: opClaim, tag: 5, pair: "kv", name: "backup", gen: 2},
		{op: opInfo, tag: 1, pair: "kv", name: "vda"},
	} {
		f.Add(encodeRequest(nil, &req)[4:])
	}
	f.Add([]byte{opRead, 0, 0, 0, 1, 255})
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeRequest(body)
		if req == nil {
			t.Fatal("nil request")
		}
		if err != nil {
			return
		}
		if storage.ValidateName(req.pair) != nil {
			t.Fatalf("accepted pair %q", req.pair)
		}
		switch req.op {
		case opRead:
			if req.n == 0 || req.n > MaxIO || req.off > uint64(storage.MaxSize) {
				t.Fatalf("accepted read of %d at %d", req.n, req.off)
			}
		case opWrite:
			if len(req.data) == 0 || len(req.data) > MaxIO || req.off > uint64(storage.MaxSize) {
				t.Fatalf("accepted write of %d at %d", len(req.data), req.off)
			}
		case opClaim:
			if arbiter.ValidateOwner(req.name) != nil {
				t.Fatalf("accepted owner %q", req.name)
			}
		}
		if again := encodeRequest(nil, req)[4:]; !bytes.Equal(again, body) {
			t.Fatalf("re-encoded %x as %x", body, again)
		}
	})
}

// FuzzDecodeReply: a hostile server's reply is an error or a reply, never
// a panic.
func FuzzDecodeReply(f *testing.F) {
	rec := arbiter.Record{Pair: "kv", Generation: 4, Owner: "backup"}
	f.Add(encodeReply(nil, opInfo, &reply{tag: 1, size: 4096, id: "x", rec: rec})[4:], opInfo)
	f.Add(encodeReply(nil, opWrite, &reply{tag: 1, status: codeFenced, msg: "m", gen: 3, rec: rec})[4:], opWrite)
	f.Add(encodeReply(nil, opRead, &reply{tag: 1, data: []byte("abc")})[4:], opRead)
	f.Fuzz(func(t *testing.T, body []byte, op byte) {
		if rep, err := decodeReply(body, op); err == nil && rep.status >= codeMax {
			t.Fatalf("accepted status %d", rep.status)
		}
	})
}
