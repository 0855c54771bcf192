package kvclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/kv"
)

// serveKV serves the real kv server (in-memory store) on ln until the test
// ends.
func serveKV(t *testing.T, ln net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- kv.NewServer(kv.OpenMemory()).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("kv server: %v", err)
		}
	})
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// dial connects to addr and closes the connection when the test ends.
func dial(t *testing.T, addr string) *Conn {
	t.Helper()
	c, err := Dial(context.Background(), addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRunAgainstKVServer(t *testing.T) {
	ln := listen(t)
	serveKV(t, ln)
	c := dial(t, ln.Addr().String())
	var progress bytes.Buffer
	res, err := Run(context.Background(), c, Options{Duration: 700 * time.Millisecond, ProgressEvery: 200 * time.Millisecond, Progress: &progress, Keys: 16})
	if err != nil {
		t.Fatalf("%v after %v", err, res)
	}
	t.Logf("%v", res)
	if res.Requests < 100 || res.Puts == 0 || res.Gets == 0 || res.Echoes == 0 || res.Puts+res.Gets+res.Echoes != res.Requests {
		t.Errorf("implausible mix: %+v", res)
	}
	if !(0 < res.P50 && res.P50 <= res.P99 && res.P99 <= res.Max) {
		t.Errorf("latencies out of order: %+v", res)
	}
	if res.Elapsed < 700*time.Millisecond || res.PerSecond() <= 0 {
		t.Errorf("elapsed %v, %v req/s", res.Elapsed, res.PerSecond())
	}
	if n := strings.Count(progress.String(), "\n"); n < 2 || !strings.Contains(progress.String(), "req/s, p50 ") {
		t.Errorf("progress lines:\n%s", progress.String())
	}
	// With 16 keys every GET of a written key is checked against a value
	// that was overwritten: the model tracked the server's store.
	for _, want := range []string{"requests in", "req/s:", "PUT", "GET", "ECHO", "p50", "p99", "max"} {
		if !strings.Contains(res.String(), want) {
			t.Errorf("summary %q lacks %q", res.String(), want)
		}
	}
}

// TestDialWaitsForServer: a forward that accepts and closes (the guest is
// not listening yet) and then a late server are both waited out.
func TestDialWaitsForServer(t *testing.T) {
	ln := listen(t)
	var refused atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// Like the switch's port forward before the guest listens: accept,
		// then close without an answer. Then the server comes up.
		for refused.Load() < 2 {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			refused.Add(1)
			c.Close()
		}
		done <- kv.NewServer(kv.OpenMemory()).Serve(ctx, ln)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	}()
	start := time.Now()
	c, err := Dial(context.Background(), ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if refused.Load() != 2 || time.Since(start) < 2*retryPause {
		t.Errorf("dial went through after %d closed connections in %v", refused.Load(), time.Since(start))
	}
	if reply, err := c.Do(context.Background(), "ECHO hi there", 30*time.Second); err != nil || reply != "hi there" {
		t.Errorf("ECHO: %q %v", reply, err)
	}
}

func TestDialGivesUp(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	_, err := Dial(context.Background(), addr, 1200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no kv server answers at "+addr) {
		t.Fatalf("err = %v", err)
	}
	// Generous on purpose: this checks that it gives up at all (it would
	// retry for a minute given a minute), not how fast.
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("gave up after %v with a budget of 1.2 s", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Dial(ctx, addr, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled dial: %v", err)
	}
}

// liar answers with the real kv server but corrupts its reply to the
// request numbered lieAt (1-based, the ECHO proof included).
func liar(t *testing.T, lieAt int, corrupt func(reply []byte) []byte) string {
	t.Helper()
	ln := listen(t)
	srv := kv.NewServer(kv.OpenMemory())
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for n := 1; ; n++ {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var reply bytes.Buffer
			srv.Handle(&reply, line[:len(line)-1])
			out := reply.Bytes()
			if n == lieAt {
				out = corrupt(out)
			}
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	})
	return ln.Addr().String()
}

func TestRunCatchesWrongAnswers(t *testing.T) {
	for name, corrupt := range map[string]func([]byte) []byte{
		"flipped byte": func(b []byte) []byte { b[0] ^= 1; return b },
		"extra space":  func(b []byte) []byte { return append(b[:len(b)-1], " \n"...) },
		"error":        func([]byte) []byte { return []byte("ERR disk on fire\n") },
	} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, liar(t, 60, corrupt))
			res, err := Run(context.Background(), c, Options{Duration: time.Minute, Keys: 8, Seed: 1})
			var wa *WrongAnswer
			if !errors.As(err, &wa) {
				t.Fatalf("err = %v, want a wrong answer", err)
			}
			if res.Requests != 58 { // the ECHO proof was request 1
				t.Errorf("%d requests counted before the wrong answer, want 58", res.Requests)
			}
			t.Logf("%v", err)
		})
	}
}

// TestRunStopsOnStalledServer: a request that gets no answer fails after
// the request timeout, and a cancelled context stops Run at once.
func TestRunStopsOnStalledServer(t *testing.T) {
	const stallFor = 5 * time.Second
	stall := func([]byte) []byte { time.Sleep(stallFor); return nil }
	c := dial(t, liar(t, 5, stall))
	_, err := Run(context.Background(), c, Options{Duration: time.Minute, RequestTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "request 4: ") {
		t.Fatalf("err = %v", err)
	}
	c.Close() // lets the liar's connection end

	c = dial(t, liar(t, 3, stall))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, c, Options{Duration: time.Minute})
	// Causal, not a speed claim: Run must return before the stalled answer
	// could have arrived.
	if !errors.Is(err, context.DeadlineExceeded) || res.Requests != 1 || time.Since(start) >= stallFor {
		t.Fatalf("after %v: %+v %v", time.Since(start), res, err)
	}
}

func TestQuantilesAndRound(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 200; i++ {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	if p50, p99, m := quantiles(lat); p50 != 100*time.Millisecond || p99 != 198*time.Millisecond || m != 200*time.Millisecond {
		t.Errorf("quantiles: %v %v %v", p50, p99, m)
	}
	if p50, p99, m := quantiles(nil); p50|p99|m != 0 {
		t.Errorf("empty: %v %v %v", p50, p99, m)
	}
	for d, want := range map[time.Duration]time.Duration{
		999:                    999,
		3456789:                3460 * time.Microsecond,
		12345678901:            12300 * time.Millisecond,
		time.Duration(1234567): 1230 * time.Microsecond,
	} {
		if got := round(d); got != want {
			t.Errorf("round(%v) = %v, want %v", d, got, want)
		}
	}
}

// TestRunStopsWhenAsked: closing Options.Stop ends a run long before its
// Duration, with every request answered (none cut off in flight).
func TestRunStopsWhenAsked(t *testing.T) {
	ln := listen(t)
	serveKV(t, ln)
	conns := []*Conn{dial(t, ln.Addr().String()), dial(t, ln.Addr().String())}
	stop := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() { close(stop) })
	h := NewHistory()
	res, err := RunClients(context.Background(), conns, Options{Duration: time.Minute, Stop: stop, History: h})
	if err != nil {
		t.Fatalf("%v after %v", err, res)
	}
	if res.Elapsed > 20*time.Second || res.Requests == 0 || res.Failed != 0 {
		t.Fatalf("stopped run: %v", res)
	}
	for _, o := range h.Ops() {
		if o.Unknown {
			t.Fatalf("an op was cut off: %+v", o)
		}
	}
}
