package kvclient

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// ms is a history offset in milliseconds, for hand-built histories.
func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func put(client int, key, value string, call, ret int, answer string) Op {
	return Op{Client: client, Kind: "PUT", Key: key, Value: value, Call: ms(call), Return: ms(ret), Answer: answer}
}

func get(client int, key string, call, ret int, answer string) Op {
	return Op{Client: client, Kind: "GET", Key: key, Call: ms(call), Return: ms(ret), Answer: answer}
}

func unknownPut(client int, key, value string, call int) Op {
	return Op{Client: client, Kind: "PUT", Key: key, Value: value, Call: ms(call), Unknown: true, Err: "connection reset"}
}

func history(ops ...Op) *History {
	h := &History{start: time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)}
	for _, o := range ops {
		h.add(o)
	}
	return h
}

func TestModelAcceptsLinearizable(t *testing.T) {
	for name, h := range map[string]*History{
		"sequential": history(
			get(0, "k", 0, 1, "NOTFOUND"),
			put(0, "k", "a", 2, 3, "OK 1"),
			get(0, "k", 4, 5, "VALUE a"),
			put(0, "k", "b", 6, 7, "OK 2"),
			get(0, "k", 8, 9, "VALUE b"),
		),
		// A GET overlapping a PUT may see the old or the new value, and
		// clients need not agree on when the PUT took effect, only on an
		// order: client 1 sees b, then client 2 (later) still sees b.
		"concurrent": history(
			put(0, "k", "a", 0, 1, "OK 1"),
			put(0, "k", "b", 2, 10, "OK 2"),
			get(1, "k", 3, 4, "VALUE a"),
			get(1, "k", 5, 6, "VALUE b"),
			get(2, "k", 7, 8, "VALUE b"),
			echoOp(3, 0, 20),
		),
		// A PUT whose answer never came may have happened...
		"unknown put seen": history(
			put(0, "k", "a", 0, 1, "OK 1"),
			unknownPut(0, "k", "x", 2),
			get(1, "k", 5, 6, "VALUE x"),
		),
		// ...or not.
		"unknown put not seen": history(
			put(0, "k", "a", 0, 1, "OK 1"),
			unknownPut(0, "k", "x", 2),
			get(1, "k", 5, 6, "VALUE a"),
		),
		"keys apart": history(
			put(0, "k1", "a", 0, 1, "OK 1"),
			put(1, "k2", "b", 0, 1, "OK 2"),
			get(2, "k1", 2, 3, "VALUE a"),
			get(2, "k2", 2, 3, "VALUE b"),
		),
	} {
		t.Run(name, func(t *testing.T) {
			v := CheckLinearizable(h, time.Minute)
			if !v.Linearizable() || len(v.Problems) != 0 {
				t.Fatalf("%v", v)
			}
			if v.Ops == 0 || !strings.Contains(v.String(), "linearizable: yes") {
				t.Errorf("%v", v)
			}
		})
	}
}

// ECHO is an ECHO op for hand-built histories.
func echoOp(client, call, ret int) Op {
	return Op{Client: client, Kind: "ECHO", Value: "hi", Call: ms(call), Return: ms(ret), Answer: "hi"}
}

func TestModelRejectsNonLinearizable(t *testing.T) {
	for name, tc := range map[string]struct {
		h     *History
		stuck string // what the problem must name
	}{
		// b overwrote a before the GET was sent: a is stale.
		"stale read": {history(
			put(0, "k", "a", 0, 1, "OK 1"),
			put(0, "k", "b", 2, 3, "OK 2"),
			get(1, "k", 4, 5, "VALUE a"),
		), "GET k -> VALUE a"},
		// An acknowledged PUT lost (as in a failover that drops it).
		"lost write": {history(
			put(0, "k", "a", 0, 1, "OK 1"),
			get(1, "k", 4, 5, "NOTFOUND"),
		), "GET k -> NOTFOUND"},
		"value never written": {history(
			put(0, "k", "a", 0, 1, "OK 1"),
			get(1, "k", 2, 3, "VALUE z"),
		), "GET k -> VALUE z"},
		// Two readers that disagree on the order of two writes.
		"order disagreement": {history(
			put(0, "k", "a", 0, 10, "OK 1"),
			put(1, "k", "b", 0, 10, "OK 2"),
			get(2, "k", 11, 12, "VALUE a"),
			get(2, "k", 13, 14, "VALUE b"),
			get(3, "k", 15, 16, "VALUE a"),
		), "GET k -> VALUE b"},
		"malformed PUT answer": {history(
			put(0, "k", "a", 0, 1, "ERR disk full"),
		), "PUT k a -> ERR disk full"},
	} {
		t.Run(name, func(t *testing.T) {
			v := CheckLinearizable(tc.h, time.Minute)
			if v.Linearizable() || v.Result != porcupine.Illegal {
				t.Fatalf("accepted: %v", v)
			}
			if len(v.Problems) != 1 || !strings.Contains(v.Problems[0], "key k:") || !strings.Contains(v.Problems[0], tc.stuck) {
				t.Errorf("problems %q do not name %q", v.Problems, tc.stuck)
			}
			if !strings.Contains(v.String(), "linearizable: NO") {
				t.Errorf("%v", v)
			}
			var html bytes.Buffer
			if err := v.Visualize(&html); err != nil || !strings.Contains(html.String(), "<html") {
				t.Errorf("visualization: %v, %d bytes", err, html.Len())
			}
		})
	}
}

// TestModelNamesOnlyFailingKeys: a bad key among good ones is the only
// problem named.
func TestModelNamesOnlyFailingKeys(t *testing.T) {
	ops := []Op{put(0, "bad", "a", 0, 1, "OK 1"), put(0, "bad", "b", 2, 3, "OK 2"), get(1, "bad", 4, 5, "VALUE a")}
	for _, k := range []string{"g1", "g2", "g3"} {
		ops = append(ops, put(2, k, "v", 0, 1, "OK 9"), get(2, k, 2, 3, "VALUE v"))
	}
	v := CheckLinearizable(history(ops...), time.Minute)
	if v.Linearizable() || v.Keys != 4 || v.Ops != 9 || len(v.Problems) != 1 || !strings.HasPrefix(v.Problems[0], "key bad:") {
		t.Fatalf("%v", v)
	}
}

func TestAllowedFinalValues(t *testing.T) {
	allowed := allowedFinalValues([]Op{
		put(0, "seq", "a", 0, 1, "OK 1"),
		put(0, "seq", "b", 2, 3, "OK 2"),
		put(0, "overlap", "a", 0, 10, "OK 3"),
		put(1, "overlap", "b", 5, 6, "OK 4"),
		put(0, "maybe", "a", 0, 1, "OK 5"),
		unknownPut(0, "maybe", "x", 2),
		unknownPut(0, "only-unknown", "y", 2),
		get(0, "read", 0, 1, "NOTFOUND"),
		echoOp(0, 0, 1),
	})
	want := map[string]string{
		"seq":          `VALUE b`,
		"overlap":      `VALUE a|VALUE b`,
		"maybe":        `VALUE x|VALUE a`,
		"only-unknown": `VALUE y|NOTFOUND`,
	}
	if len(allowed) != len(want) {
		t.Errorf("keys: %q", allowed)
	}
	for k, w := range want {
		if got := strings.Join(allowed[k], "|"); got != w {
			t.Errorf("%s: %q, want %q", k, got, w)
		}
	}
}

func TestHistoryJSONLines(t *testing.T) {
	h := history(put(0, "k", "a b", 5, 7, "OK 1"), unknownPut(1, "k", "x", 6), get(2, "k", 1, 2, "NOTFOUND"))
	var buf bytes.Buffer
	if err := h.WriteJSONLines(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines:\n%s", len(lines), buf.String())
	}
	var got []opLine
	for _, l := range lines {
		var o opLine
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, o)
	}
	base := h.Start().UnixNano()
	// In invocation order, times from the start on.
	if got[0].Op != "GET" || got[1].Op != "PUT" || got[2].Unknown != true {
		t.Errorf("order: %+v", got)
	}
	if got[1].CallUnixNs != base+int64(ms(5)) || got[1].ReturnUnixNs != base+int64(ms(7)) || got[1].Value != "a b" || got[1].Answer != "OK 1" {
		t.Errorf("PUT line: %s", lines[1])
	}
	if got[2].ReturnUnixNs != 0 || got[2].Error != "connection reset" || got[2].Client != 1 {
		t.Errorf("unknown line: %s", lines[2])
	}
}

func TestHistoryLongest(t *testing.T) {
	h := history(put(0, "k", "a", 0, 5, "OK 1"), unknownPut(0, "k", "b", 6), get(1, "k", 1, 40, "VALUE a"), echoOp(2, 2, 3))
	op, ok := h.Longest()
	if !ok || op.Client != 1 || op.Wait() != ms(39) {
		t.Errorf("longest: %+v %v", op, ok)
	}
	if _, ok := history().Longest(); ok {
		t.Error("an empty history has a longest op")
	}
}

// TestRunClientsLinearizable: four clients on shared keys against the real
// kv server record a history that checks linearizable, and every key they
// wrote reads back. Then a write behind their back makes both the
// read-back and the check fail.
func TestRunClientsLinearizable(t *testing.T) {
	ln := listen(t)
	serveKV(t, ln)
	addr := ln.Addr().String()
	conns := []*Conn{dial(t, addr), dial(t, addr), dial(t, addr), dial(t, addr)}
	h := NewHistory()
	res, err := RunClients(context.Background(), conns, Options{Duration: 700 * time.Millisecond, Keys: 8, History: h})
	if err != nil {
		t.Fatalf("%v after %v", err, res)
	}
	ops := h.Ops()
	if res.Clients != 4 || res.Requests < 100 || len(ops) != res.Requests || res.Failed != 0 {
		t.Fatalf("%v; %d ops recorded", res, len(ops))
	}
	seen := map[int]bool{}
	for _, o := range ops {
		seen[o.Client] = true
		if o.Return < o.Call || o.Unknown || o.Answer == "" && o.Kind != "ECHO" {
			t.Fatalf("op %+v", o)
		}
	}
	if len(seen) != 4 {
		t.Errorf("ops from clients %v", seen)
	}
	rb, err := ReadBackKeys(context.Background(), dial(t, addr), h, 4, time.Minute)
	if err != nil || rb.Keys == 0 || rb.Keys > 8 || len(rb.Mismatches) != 0 {
		t.Fatalf("read back: %+v %v", rb, err)
	}
	v := CheckLinearizable(h, time.Minute)
	if !v.Linearizable() || v.Ops < res.Puts+res.Gets+rb.Keys {
		t.Fatalf("%v (run %v, %d keys read back)", v, res, rb.Keys)
	}
	t.Logf("%v; %v", res, v)

	// A write no client made: the store no longer holds what the history
	// says it must.
	key := ops[0].Key
	for _, o := range ops {
		if o.Kind == "PUT" {
			key = o.Key
			break
		}
	}
	if reply, err := dial(t, addr).Do(context.Background(), "PUT "+key+" intruder", time.Minute); err != nil || !strings.HasPrefix(reply, "OK ") {
		t.Fatalf("intruding PUT: %q %v", reply, err)
	}
	rb, err = ReadBackKeys(context.Background(), dial(t, addr), h, 5, time.Minute)
	if err != nil || len(rb.Mismatches) != 1 || !strings.HasPrefix(rb.Mismatches[0], key+`: got "VALUE intruder"`) {
		t.Fatalf("read back after the intruder: %+v %v", rb, err)
	}
	if v := CheckLinearizable(h, time.Minute); v.Linearizable() || len(v.Problems) != 1 || !strings.Contains(v.Problems[0], "VALUE intruder") {
		t.Fatalf("after the intruder: %v", v)
	}
}

// TestFailedRequestIsUnknown: a request whose answer never comes is
// recorded with an unknown outcome and counted as failed; the history
// still checks.
func TestFailedRequestIsUnknown(t *testing.T) {
	stall := func([]byte) []byte { time.Sleep(2 * time.Second); return nil }
	c := dial(t, liar(t, 6, stall))
	h := NewHistory()
	res, err := Run(context.Background(), c, Options{Duration: time.Minute, RequestTimeout: 300 * time.Millisecond, History: h, Seed: 3})
	if err == nil || !strings.Contains(err.Error(), "request 5: ") || res.Failed != 1 || res.Requests != 4 {
		t.Fatalf("%v: %v", res, err)
	}
	ops := h.Ops()
	last := ops[len(ops)-1]
	if len(ops) != 5 || !last.Unknown || last.Err == "" || last.Wait() != 0 {
		t.Fatalf("ops %+v", ops)
	}
	if v := CheckLinearizable(h, time.Minute); !v.Linearizable() {
		t.Errorf("%v", v)
	}
}
