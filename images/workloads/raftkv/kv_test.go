package raftkv

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func TestBasicOps(t *testing.T) {
	c := newKVCluster(t, 3, 0)
	ck := c.clerk()
	ctx := context.Background()
	if v, err := ck.Get(ctx, "x"); err != nil || v != "" {
		t.Fatalf("Get of a missing key: %q %v", v, err)
	}
	if err := ck.Put(ctx, "x", "1"); err != nil {
		t.Fatal(err)
	}
	if err := ck.Append(ctx, "x", "2"); err != nil {
		t.Fatal(err)
	}
	// Another clerk sees the writes.
	if v, err := c.clerk().Get(ctx, "x"); err != nil || v != "12" {
		t.Fatalf("Get: %q %v", v, err)
	}
}

func TestConcurrentClientsLinearizable(t *testing.T) {
	c := newKVCluster(t, 3, 0)
	runLinearizable(t, c, testDuration(2*time.Second, 30*time.Second), 100, func(stop <-chan struct{}) { <-stop })
}

func TestPartitionsLinearizable(t *testing.T) {
	c := newKVCluster(t, 5, 0)
	c.net.SetUnreliable(true)
	runLinearizable(t, c, testDuration(5*time.Second, 60*time.Second), 50, func(stop <-chan struct{}) {
		for {
			perm := rand.Perm(5)
			cut := 1 + rand.IntN(4)
			c.net.Partition(perm[:cut], perm[cut:])
			if !sleepOrStop(time.Duration(300+rand.IntN(500))*time.Millisecond, stop) {
				break
			}
			c.net.Partition()
			if !sleepOrStop(time.Duration(200+rand.IntN(300))*time.Millisecond, stop) {
				break
			}
		}
		c.net.Partition()
	})
}

func TestCrashesAndSnapshotsLinearizable(t *testing.T) {
	const maxRaftState = 1000
	c := newKVCluster(t, 5, maxRaftState)
	c.net.SetUnreliable(true)
	crashes := 0
	runLinearizable(t, c, testDuration(6*time.Second, 60*time.Second), 50, func(stop <-chan struct{}) {
		for {
			// Crash up to two servers at once; a majority survives.
			victims := rand.Perm(5)[:1+rand.IntN(2)]
			for _, v := range victims {
				c.crash(v)
				crashes++
			}
			ok := sleepOrStop(time.Duration(300+rand.IntN(400))*time.Millisecond, stop)
			for _, v := range victims {
				c.start(v)
			}
			if !ok || !sleepOrStop(time.Duration(200+rand.IntN(300))*time.Millisecond, stop) {
				return
			}
		}
	})
	if crashes < 3 {
		t.Fatalf("only %d crashes", crashes)
	}
	checkSnapshotBounded(t, c, maxRaftState)
}

// checkSnapshotBounded: the persisted log stays within a small multiple
// of the threshold (it is checked after each apply, and entries arriving
// in a batch can overshoot it a little).
func checkSnapshotBounded(t *testing.T, c *kvCluster, maxRaftState int) {
	t.Helper()
	snapshots := 0
	for i, p := range c.persisters {
		if size := p.Size(); size > 8*maxRaftState {
			t.Errorf("server %d persists %d bytes of Raft state, threshold %d", i, size, maxRaftState)
		}
		if p.SnapshotSize() > 0 {
			snapshots++
		}
	}
	if snapshots == 0 {
		t.Error("no server took a snapshot")
	}
}

func TestSnapshotSizeBounded(t *testing.T) {
	const maxRaftState = 1000
	c := newKVCluster(t, 3, maxRaftState)
	ck := c.clerk()
	ctx := context.Background()
	const ops = 300
	for i := range ops {
		if err := ck.Put(ctx, "k"+string(rune('a'+i%5)), strings.Repeat("v", i%20)); err != nil {
			t.Fatal(err)
		}
	}
	checkSnapshotBounded(t, c, maxRaftState)
	for i := range 3 {
		if s := c.persisters[i].SnapshotSize(); s > 500 {
			t.Errorf("server %d snapshot of %d bytes for 5 short keys", i, s)
		}
	}
	// Restarted servers recover the values from snapshot plus log.
	for i := range 3 {
		c.crash(i)
	}
	for i := range 3 {
		c.start(i)
	}
	want := strings.Repeat("v", (ops-1)%20)
	if v, err := c.clerk().Get(ctx, "k"+string(rune('a'+(ops-1)%5))); err != nil || v != want {
		t.Fatalf("after restart: %q %v, want %q", v, err, want)
	}
}

// TestDedupRetriedRequests sends the same Append twice, as a clerk does
// when a reply is lost, and then checks clerks on a lossy network: each
// Append must appear exactly once although many were retried.
func TestDedupRetriedRequests(t *testing.T) {
	c := newKVCluster(t, 3, 0)
	ctx := context.Background()
	ck := c.clerk()
	if err := ck.Put(ctx, "d", ""); err != nil {
		t.Fatal(err)
	}
	op := Op{Kind: OpAppend, ClientID: 77, Seq: 1, Key: "d", Value: "once"}
	sent := 0
	for sent < 2 {
		for i := range 3 {
			c.mu.Lock()
			s := c.servers[i]
			c.mu.Unlock()
			if st, _ := s.Do(ctx, op); st == StatusOK {
				sent++
			}
		}
	}
	if v, _ := ck.Get(ctx, "d"); v != "once" {
		t.Fatalf("duplicate request executed twice: %q", v)
	}

	c.net.SetUnreliable(true)
	var want strings.Builder
	retries := 0
	for i := range 60 {
		v := string(rune('a'+i%26)) + ";"
		if err := ck.Append(ctx, "e", v); err != nil {
			t.Fatal(err)
		}
		want.WriteString(v)
	}
	retries = ck.Retries
	c.net.SetUnreliable(false)
	if got, _ := ck.Get(ctx, "e"); got != want.String() {
		t.Fatalf("after %d retries: %q, want %q", retries, got, want.String())
	}
	if retries == 0 {
		t.Fatal("no request was retried: the test did not exercise dedup")
	}
	t.Logf("60 appends, %d retries", retries)
}

// TestCheckerRejectsNonLinearizable makes sure the check can fail: a read
// that misses a write completed before it started, and a read of a value
// that was never written.
func TestCheckerRejectsNonLinearizable(t *testing.T) {
	put := func(client int, key, v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: ModelInput{Kind: OpPut, Key: key, Value: v}, Call: call, Return: ret}
	}
	get := func(client int, key, v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: ModelInput{Kind: OpGet, Key: key}, Output: ModelOutput{Value: v}, Call: call, Return: ret}
	}
	app := func(client int, key, v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: ModelInput{Kind: OpAppend, Key: key, Value: v}, Call: call, Return: ret}
	}
	for name, tc := range map[string]struct {
		ops []porcupine.Operation
		ok  bool
	}{
		"stale read": {[]porcupine.Operation{put(0, "x", "1", 0, 10), get(1, "x", "", 20, 30)}, false},
		"phantom":    {[]porcupine.Operation{put(0, "x", "1", 0, 10), get(1, "x", "2", 20, 30)}, false},
		"lost append": {[]porcupine.Operation{put(0, "x", "a", 0, 10), app(1, "x", "b", 11, 20), app(2, "x", "c", 11, 20),
			get(0, "x", "ac", 30, 40)}, false},
		"reordered reads": {[]porcupine.Operation{put(0, "x", "1", 0, 100), get(1, "x", "1", 10, 20), get(2, "x", "", 30, 40)}, false},
		"concurrent ok":   {[]porcupine.Operation{put(0, "x", "1", 0, 100), get(1, "x", "", 10, 20), get(2, "x", "1", 30, 40)}, true},
		"appends ok": {[]porcupine.Operation{put(0, "x", "a", 0, 10), app(1, "x", "b", 11, 20), app(2, "x", "c", 11, 20),
			get(0, "x", "acb", 30, 40), put(0, "y", "z", 0, 5)}, true},
	} {
		h := NewHistory()
		h.ops = tc.ops
		err := h.Check(5 * time.Second)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: accepted a non-linearizable history", name)
		}
	}
	// And a real recorded history with one Get's result tampered with.
	c := newKVCluster(t, 3, 0)
	h := NewHistory()
	stop := make(chan struct{})
	time.AfterFunc(time.Second, func() { close(stop) })
	if n := workload(t, c, 3, 2, h, stop); n < 20 {
		t.Fatalf("only %d ops", n)
	}
	if err := h.Check(10 * time.Second); err != nil {
		t.Fatalf("untampered history: %v", err)
	}
	tampered := false
	for i, op := range h.ops {
		if in := op.Input.(ModelInput); in.Kind == OpGet {
			h.ops[i].Output = ModelOutput{Value: "never written"}
			tampered = true
			break
		}
	}
	if !tampered {
		t.Fatal("no Get in the history")
	}
	if err := h.Check(10 * time.Second); err == nil || !strings.Contains(err.Error(), "not linearizable") {
		t.Fatalf("tampered history: %v", err)
	}
}

func TestOpRoundTrip(t *testing.T) {
	for _, op := range []Op{
		{Kind: OpGet, ClientID: 1, Seq: 1, Key: "k"},
		{Kind: OpAppend, ClientID: 1 << 63, Seq: 99, Key: "", Value: "v\x00\n"},
	} {
		got, err := decodeOp(op.encode())
		if err != nil || got != op {
			t.Fatalf("%+v: %+v %v", op, got, err)
		}
	}
	r := reply{Status: StatusTimeout, Value: "x"}
	if got, err := decodeReply(r.encode()); err != nil || got != r {
		t.Fatalf("reply: %+v %v", got, err)
	}
	if _, err := decodeOp([]byte{1, 2, 3}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("raft message decoded as an op: %v", err)
	}
}

func FuzzDecodeOp(f *testing.F) {
	f.Add(Op{Kind: OpPut, ClientID: 5, Seq: 2, Key: "k", Value: "v"}.encode())
	f.Add(reply{Status: StatusOK, Value: "v"}.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if op, err := decodeOp(b); err == nil {
			if got, err := decodeOp(op.encode()); err != nil || got != op {
				t.Fatalf("re-encoding %+v: %+v %v", op, got, err)
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if r, err := decodeReply(b); err == nil {
			if got, err := decodeReply(r.encode()); err != nil || got != r {
				t.Fatalf("re-encoding %+v: %+v %v", r, got, err)
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
	})
}

func FuzzDecodeSnapshot(f *testing.F) {
	s := newState()
	s.apply(Op{Kind: OpPut, ClientID: 1, Seq: 1, Key: "a", Value: "b"})
	f.Add(s.encode())
	f.Add(newState().encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatal(err)
			}
			return
		}
		if _, err := decodeState(st.encode()); err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
	})
}

func TestStateDedupSurvivesSnapshot(t *testing.T) {
	s := newState()
	s.apply(Op{Kind: OpAppend, ClientID: 9, Seq: 3, Key: "k", Value: "x"})
	s2, err := decodeState(s.encode())
	if err != nil {
		t.Fatal(err)
	}
	// The retried op (same client, same seq) after a restore is a no-op.
	if v := s2.apply(Op{Kind: OpAppend, ClientID: 9, Seq: 3, Key: "k", Value: "x"}); v != "x" {
		t.Fatalf("retried append after restore: %q", v)
	}
}
