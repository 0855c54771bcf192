package logchannel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// noLeaks fails the test if goroutines started during it are still alive
// shortly after it ends.
func noLeaks(t testing.TB) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:n])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func testCfg() Config {
	return Config{
		Session:           42,
		Generation:        7,
		HeartbeatInterval: 20 * time.Millisecond,
		Timeout:           10 * time.Second, // generous: -race on a loaded host
		Logger:            slog.New(slog.DiscardHandler),
	}
}

// plainTCPCfg is testCfg for tests of the channel itself over loopback
// TCP without TLS (auth_test.go covers authentication).
func plainTCPCfg() Config {
	c := testCfg()
	c.InsecureTCP = true
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond; it synchronizes on observable state, it does not
// assert anything about timing.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func entryFor(seq uint64) []byte {
	n := 8 + int(seq%33)
	b := make([]byte, n)
	binary.LittleEndian.PutUint64(b, seq)
	for i := 8; i < n; i++ {
		b[i] = byte(seq) + byte(i)
	}
	return b
}

func checkEntry(seq uint64, e []byte) error {
	want := entryFor(seq)
	if string(e) != string(want) {
		return fmt.Errorf("seq %d: entry %x, want %x", seq, e, want)
	}
	return nil
}

// roundTrip sends entries from a primary with pcfg to a backup with bcfg
// and checks each arrives, is acked and reported replayed.
func roundTrip(t *testing.T, network, addr string, bcfg, pcfg Config) {
	noLeaks(t)
	ctx := ctxT(t)
	ln, err := Listen(ctx, network, addr, bcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 100_000
	recvErr := make(chan error, 1)
	go func() {
		r, err := ln.Accept(ctx)
		if err != nil {
			recvErr <- err
			return
		}
		defer r.Close()
		if err := checkTLS(r.l.conn, bcfg.Auth); err != nil {
			recvErr <- err
			return
		}
		for i := uint64(1); i <= n; i++ {
			seq, e, err := r.Next(ctx)
			if err != nil {
				recvErr <- err
				return
			}
			if seq != i {
				recvErr <- fmt.Errorf("got seq %d, want %d", seq, i)
				return
			}
			if err := checkEntry(seq, e); err != nil {
				recvErr <- err
				return
			}
			if i%1000 == 0 {
				r.ReportReplayed(i)
			}
		}
		// The sender closes cleanly after its last ack: the next Next
		// must say so.
		_, _, err = r.Next(ctx)
		if !errors.Is(err, ErrPeerClosed) {
			recvErr <- fmt.Errorf("after last entry: %v, want ErrPeerClosed", err)
			return
		}
		recvErr <- nil
	}()
	s, err := Dial(ctx, network, ln.Addr().String(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkTLS(s.l.conn, pcfg.Auth); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= n; i++ {
		seq, err := s.Append(ctx, entryFor(i))
		if err != nil {
			t.Fatal(err)
		}
		if seq != i {
			t.Fatalf("Append returned seq %d, want %d", seq, i)
		}
	}
	if err := s.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replay report of the last entry", func() bool { return s.Stats().ReplayedThrough == n })
	st := s.Stats()
	t.Logf("%s: %d entries in %d batches, %d acks, rtt %v", network, st.Entries, st.Batches, st.AcksReceived, st.RTT)
	if st.Batches >= n/10 {
		t.Errorf("batching: %d batch frames for %d entries", st.Batches, n)
	}
	if st.UnackedEntries != 0 || st.UnackedBytes != 0 || st.LagEntries != 0 {
		t.Errorf("after full ack and replay: %+v", st)
	}
	if st.EntriesPerSec <= 0 || st.BytesPerSec <= 0 {
		t.Errorf("rates not measured: %+v", st)
	}
	s.Close()
	if err := <-recvErr; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(s.Err(), ErrClosed) {
		t.Errorf("sender Err after Close = %v", s.Err())
	}
}

func TestRoundTripTCP(t *testing.T) { roundTrip(t, "tcp", "127.0.0.1:0", plainTCPCfg(), plainTCPCfg()) }

// TestRoundTripUnix: unix sockets need no credentials.
func TestRoundTripUnix(t *testing.T) {
	roundTrip(t, "unix", filepath.Join(t.TempDir(), "log.sock"), testCfg(), testCfg())
}

func TestBatchingAndAcks(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	cfg := testCfg()
	cfg.Linger = 50 * time.Millisecond // long linger: the batch bound must trigger
	cfg.MaxBatchEntries = 100
	s, r, err := Pipe(ctx, cfg, testCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer s.Close()
	go func() {
		for {
			if _, _, err := r.Next(ctx); err != nil {
				return
			}
		}
	}()
	for i := uint64(1); i <= 1000; i++ {
		if _, err := s.Append(ctx, entryFor(i)); err != nil {
			t.Fatal(err)
		}
	}
	note := s.AckNotify(1000)
	if err := s.WaitAcked(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	select {
	case <-note:
	default:
		t.Fatal("AckNotify(1000) not closed after WaitAcked(1000) returned")
	}
	if got := s.AckedThrough(); got < 1000 {
		t.Fatalf("AckedThrough = %d", got)
	}
	// Sending a full batch also takes whatever the open batch holds, so
	// there may be a few more than 10.
	if st := s.Stats(); st.Batches < 10 || st.Batches > 100 {
		t.Errorf("1000 entries with MaxBatchEntries 100: %d batches", st.Batches)
	}
	// A single entry goes out on Flush without waiting for the linger.
	seq, err := s.Append(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	s.Flush()
	if err := s.WaitAcked(ctx, seq); err != nil {
		t.Fatal(err)
	}
	// A notification for an already acked seq is closed at once.
	select {
	case <-s.AckNotify(seq):
	default:
		t.Fatal("AckNotify of an acked seq not closed")
	}
}

// gateConn wraps a conn so a test can stop delivering bytes (Pause: reads
// block, as a receiver that stops reading) or freeze the process
// entirely (Freeze: reads and writes block).
type gateConn struct {
	net.Conn
	mu     sync.Mutex
	rgate  chan struct{} // closed while reads flow
	wgate  chan struct{} // closed while writes flow
	closed chan struct{}
	once   sync.Once
}

func newGateConn(c net.Conn) *gateConn {
	g := &gateConn{Conn: c, rgate: make(chan struct{}), wgate: make(chan struct{}), closed: make(chan struct{})}
	close(g.rgate)
	close(g.wgate)
	return g
}

func (g *gateConn) wait(which *chan struct{}) error {
	g.mu.Lock()
	ch := *which
	g.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-g.closed:
		return net.ErrClosed
	}
}

func (g *gateConn) Read(p []byte) (int, error) {
	if err := g.wait(&g.rgate); err != nil {
		return 0, err
	}
	return g.Conn.Read(p)
}

func (g *gateConn) Write(p []byte) (int, error) {
	if err := g.wait(&g.wgate); err != nil {
		return 0, err
	}
	return g.Conn.Write(p)
}

func (g *gateConn) Close() error {
	g.once.Do(func() { close(g.closed) })
	return g.Conn.Close()
}

func (g *gateConn) Pause() {
	g.mu.Lock()
	g.rgate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gateConn) Resume() {
	g.mu.Lock()
	close(g.rgate)
	g.mu.Unlock()
}

func (g *gateConn) Freeze() {
	g.mu.Lock()
	g.rgate = make(chan struct{})
	g.wgate = make(chan struct{})
	g.mu.Unlock()
}

func TestBackPressureWindow(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	a, b := net.Pipe()
	gb := newGateConn(b)
	cfg := testCfg()
	cfg.Window = 16 << 10
	s, r, err := Connect(ctx, a, gb, cfg, testCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer s.Close()
	gb.Pause()

	const n = 200
	entry := make([]byte, 1024)
	appended := make(chan uint64, n)
	appendErr := make(chan error, 1)
	go func() {
		for range n {
			seq, err := s.Append(ctx, entry)
			if err != nil {
				appendErr <- err
				return
			}
			appended <- seq
		}
		appendErr <- nil
	}()
	// One snapshot must show both: an ack already on its way when the
	// gate closed can land between two Stats calls (seen once under load).
	var st Stats
	waitFor(t, "Append to block on the window", func() bool {
		st = s.Stats()
		return st.BlockedAppends == 1 && st.UnackedBytes+1024 > uint64(cfg.Window)
	})
	if len(appended) == n {
		t.Fatal("all appends completed while the receiver was paused")
	}
	t.Logf("blocked after %d appends, %d bytes unacked", len(appended), st.UnackedBytes)

	gb.Resume()
	go func() {
		for {
			if _, _, err := r.Next(ctx); err != nil {
				return
			}
		}
	}()
	if err := <-appendErr; err != nil {
		t.Fatal(err)
	}
	if err := s.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.BlockedTotal == 0 || st.BlockedAppends != 0 {
		t.Errorf("blocked counters: %+v", st)
	}

	// A cancelled context ends a blocked Append.
	gb.Pause()
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Append(cctx, entry); err != nil {
				errc <- err
				return
			}
		}
	}()
	waitFor(t, "Append to block again", func() bool { return s.Stats().BlockedAppends == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked Append after cancel: %v", err)
	}
	gb.Resume()
}

func TestReplayLagBound(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	cfg := testCfg()
	cfg.MaxReplayLag = 10
	s, r, err := Pipe(ctx, cfg, testCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer s.Close()
	for i := uint64(1); i <= 10; i++ {
		if _, err := s.Append(ctx, entryFor(i)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan uint64, 1)
	go func() {
		seq, err := s.Append(ctx, entryFor(11))
		if err != nil {
			t.Error(err)
		}
		done <- seq
	}()
	waitFor(t, "Append to block on replay lag", func() bool { return s.Stats().BlockedAppends == 1 })
	// Acks on receipt do not relieve a replay-lag bound.
	if err := s.WaitAcked(ctx, 10); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("Append returned while the backup had replayed nothing")
	default:
	}
	st := s.Stats()
	if st.LagEntries != 10 || st.LagTime <= 0 {
		t.Errorf("lag: %d entries, %v", st.LagEntries, st.LagTime)
	}
	if st := r.Stats(); st.LagEntries < 10 || st.LagTime <= 0 {
		t.Errorf("receiver lag: %d entries, %v", st.LagEntries, st.LagTime)
	}
	for i := uint64(1); i <= 5; i++ {
		if _, _, err := r.Next(ctx); err != nil {
			t.Fatal(err)
		}
	}
	r.ReportReplayed(5)
	if seq := <-done; seq != 11 {
		t.Fatalf("unblocked Append got seq %d", seq)
	}
	if st := r.Stats(); st.ReplayedThrough != 5 || st.Delivered != 5 {
		t.Errorf("receiver stats: %+v", st)
	}
}

func TestHeartbeatTimeout(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	a, b := net.Pipe()
	gb := newGateConn(b)
	cfg := testCfg()
	cfg.Timeout = 300 * time.Millisecond
	rcfg := cfg
	rcfg.Timeout = time.Hour // only the sender's detector is under test
	s, r, err := Connect(ctx, a, gb, cfg, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer s.Close()
	waitFor(t, "an RTT estimate", func() bool { return s.Stats().RTT > 0 && r.Stats().RTT > 0 })
	gb.Freeze()
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("frozen peer not detected")
	}
	err = s.Err()
	if !errors.Is(err, ErrPeerSilent) || !strings.Contains(err.Error(), "nothing heard for") {
		t.Fatalf("Err = %v, want ErrPeerSilent with the silence age", err)
	}
	t.Log(err)
	if _, err := s.Append(ctx, []byte("x")); !errors.Is(err, ErrPeerSilent) {
		t.Fatalf("Append after failure: %v", err)
	}
	if err := s.WaitAcked(ctx, 1); !errors.Is(err, ErrPeerSilent) {
		t.Fatalf("WaitAcked after failure: %v", err)
	}
}

func TestEOFAndCleanClose(t *testing.T) {
	t.Run("sender closes", func(t *testing.T) {
		noLeaks(t)
		ctx := ctxT(t)
		s, r, err := Pipe(ctx, testCfg(), testCfg())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		for i := uint64(1); i <= 3; i++ {
			s.Append(ctx, entryFor(i))
		}
		s.Close() // flushes the three entries first
		s.Close() // idempotent
		if _, err := s.Append(ctx, []byte("late")); !errors.Is(err, ErrClosed) {
			t.Fatalf("Append after Close: %v", err)
		}
		for i := uint64(1); i <= 3; i++ {
			seq, e, err := r.Next(ctx)
			if err != nil || seq != i || checkEntry(seq, e) != nil {
				t.Fatalf("Next after peer close: %d %x %v", seq, e, err)
			}
		}
		if _, _, err := r.Next(ctx); !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("Next = %v, want ErrPeerClosed", err)
		}
	})
	t.Run("receiver closes", func(t *testing.T) {
		noLeaks(t)
		ctx := ctxT(t)
		s, r, err := Pipe(ctx, testCfg(), testCfg())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r.Close()
		<-s.Done()
		if !errors.Is(s.Err(), ErrPeerClosed) {
			t.Fatalf("sender Err = %v, want ErrPeerClosed", s.Err())
		}
		if !errors.Is(r.Err(), ErrClosed) {
			t.Fatalf("receiver Err = %v, want ErrClosed", r.Err())
		}
	})
	t.Run("crash", func(t *testing.T) {
		noLeaks(t)
		ctx := ctxT(t)
		a, b := net.Pipe()
		s, r, err := Connect(ctx, a, b, testCfg(), testCfg())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer s.Close()
		a.Close() // the primary vanishes without a close frame
		<-r.Done()
		err = r.Err()
		if !errors.Is(err, ErrPeerLost) || errors.Is(err, ErrPeerClosed) || !strings.Contains(err.Error(), "EOF") {
			t.Fatalf("receiver Err = %v, want ErrPeerLost naming EOF", err)
		}
		t.Log(err)
	})
}

// fakeSender does the sender's handshake by hand on conn and then
// discards whatever the receiver writes, so the test can write raw frames.
func fakeSender(t *testing.T, conn net.Conn, h Hello) {
	t.Helper()
	go io.Copy(io.Discard, conn)
	if _, err := conn.Write(AppendHello(nil, h)); err != nil {
		t.Fatal(err)
	}
}

func rawBatch(t *testing.T, first uint64, n int) []byte {
	f := Frame{Type: FrameBatch, FirstSeq: first}
	for i := range n {
		f.Entries = append(f.Entries, entryFor(first+uint64(i)))
	}
	b, err := AppendFrame(nil, &f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func goodHello() Hello {
	return Hello{Version: ProtocolVersion, Role: RoleSender, Session: 42, Generation: 7}
}

func rawReceiver(t *testing.T) (net.Conn, *Receiver) {
	ctx := ctxT(t)
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close() })
	type res struct {
		r   *Receiver
		err error
	}
	ch := make(chan res, 1)
	go func() {
		r, err := NewReceiver(ctx, b, testCfg())
		ch <- res{r, err}
	}()
	fakeSender(t, a, goodHello())
	rr := <-ch
	r, err := rr.r, rr.err
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return a, r
}

func TestGarbledStream(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	a, r := rawReceiver(t)
	a.Write(rawBatch(t, 1, 10))
	bad := rawBatch(t, 11, 10)
	bad[len(bad)/2] ^= 0x40
	a.Write(bad)
	for i := uint64(1); i <= 10; i++ {
		if _, _, err := r.Next(ctx); err != nil {
			t.Fatalf("entry %d before the garbled frame: %v", i, err)
		}
	}
	_, _, err := r.Next(ctx)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "CRC-32C mismatch in batch frame at seq 11") {
		t.Fatalf("Next = %v, want a CRC error at seq 11", err)
	}
	t.Log(err)
}

func TestSequenceGap(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	a, r := rawReceiver(t)
	a.Write(rawBatch(t, 1, 5))
	a.Write(rawBatch(t, 7, 1))
	for range 5 {
		r.Next(ctx)
	}
	_, _, err := r.Next(ctx)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "batch starts at seq 7, want 6") {
		t.Fatalf("Next = %v, want a gap error", err)
	}
}

func TestOversizedFrameHeader(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	a, r := rawReceiver(t)
	a.Write([]byte{byte(FrameBatch), 0xff, 0xff, 0xff, 0x7f})
	_, _, err := r.Next(ctx)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "length 2147483647 exceeds MaxFramePayload") {
		t.Fatalf("Next = %v", err)
	}
}

func TestAcceptCancel(t *testing.T) {
	noLeaks(t)
	ln, err := Listen(context.Background(), "tcp", "127.0.0.1:0", plainTCPCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := ln.Accept(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Accept = %v, want deadline exceeded", err)
	}
	// The listener still works after a cancelled Accept.
	ctx2 := ctxT(t)
	go func() {
		if s, err := Dial(ctx2, "tcp", ln.Addr().String(), plainTCPCfg()); err == nil {
			<-s.Done()
			s.Close()
		}
	}()
	r, err := ln.Accept(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

func TestHandshakeMismatch(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	t.Run("version", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		h := AppendHello(nil, goodHello())
		h[4] = 2
		go io.Copy(io.Discard, a)
		go a.Write(h)
		_, err := NewReceiver(ctx, b, testCfg())
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "peer speaks protocol version 2, this end speaks 1") {
			t.Fatalf("err = %v, want a clear version error", err)
		}
		t.Log(err)
	})
	t.Run("session", func(t *testing.T) {
		cfg := testCfg()
		cfg.Session = 43
		_, _, err := Pipe(ctx, testCfg(), cfg)
		if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "session") {
			t.Fatalf("err = %v, want a session mismatch", err)
		}
	})
	t.Run("generation", func(t *testing.T) {
		cfg := testCfg()
		cfg.Generation = 8
		_, _, err := Pipe(ctx, testCfg(), cfg)
		if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "generation") {
			t.Fatalf("err = %v, want a generation mismatch", err)
		}
	})
	t.Run("role", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		h := goodHello()
		h.Role = RoleReceiver
		go io.Copy(io.Discard, a)
		go a.Write(AppendHello(nil, h))
		_, err := NewReceiver(ctx, b, testCfg())
		if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "role") {
			t.Fatalf("err = %v, want a role mismatch", err)
		}
	})
	t.Run("context", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		go io.Copy(io.Discard, a) // peer reads but never says hello
		_, err := NewReceiver(cctx, b, testCfg())
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the context's error", err)
		}
	})
}

func TestDecodeErrorsNameFields(t *testing.T) {
	big := Frame{Type: FrameBatch, FirstSeq: 1, Entries: [][]byte{make([]byte, 8)}}
	b, err := AppendFrame(nil, &big)
	if err != nil {
		t.Fatal(err)
	}
	// Claim a huge entry length and fix up the CRC, so only the bound trips.
	binary.LittleEndian.PutUint32(b[frameHeaderSize+batchHeaderSize:], MaxEntrySize+1)
	b = sealFrame(b[:len(b)-frameTrailer], 0)
	_, _, err = DecodeFrame(b)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("length %d exceeds MaxEntrySize", MaxEntrySize+1)) {
		t.Fatalf("err = %v", err)
	}
	if _, err := AppendFrame(nil, &Frame{Type: FrameBatch, FirstSeq: 1, Entries: [][]byte{make([]byte, MaxEntrySize+1)}}); err == nil {
		t.Fatal("encoder accepted an oversized entry")
	}
	if _, err := (&Sender{}).Append(context.Background(), make([]byte, MaxEntrySize+1)); err == nil || !strings.Contains(err.Error(), "MaxEntrySize") {
		t.Fatalf("Append oversized: %v", err)
	}
}

func fuzzSeeds(f *testing.F) {
	for _, fr := range []Frame{
		{Type: FrameBatch, FirstSeq: 1, Entries: [][]byte{[]byte("hello"), {}, []byte("world")}},
		{Type: FrameAck, Acked: 10, Replayed: 3},
		{Type: FrameHeartbeat, SentAt: 5, EchoSentAt: 3, EchoHold: 1},
		{Type: FrameClose, Reason: "bye"},
	} {
		b, err := AppendFrame(nil, &fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{9, 0, 0, 0, 0, 0, 0, 0, 0})
}

func FuzzDecodeFrame(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := DecodeFrame(b)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("consumed %d of %d bytes", n, len(b))
		}
		if fr.Type == FrameBatch && len(fr.Entries) > len(b)/4 {
			t.Fatalf("%d entries from %d bytes", len(fr.Entries), len(b))
		}
		re, err := AppendFrame(nil, &fr)
		if err != nil {
			t.Fatalf("accepted frame does not re-encode: %v", err)
		}
		if string(re) != string(b[:n]) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", re, b[:n])
		}
	})
}

// BenchmarkThroughput appends entries as fast as the channel takes them
// over loopback TCP, without TLS (plain) and with it (tls). The cost of
// TLS is tls-vs-plain's tls/plain: the ratio of the two rates (below 1:
// TLS is slower), measured in alternating rounds on two open channels so
// that load from elsewhere on the machine falls on both alike (an op there
// is one entry on each); and cpu-tls/plain, the ratio of the CPU time both
// ends spent (above 1: TLS costs more), which such load hardly moves.
func BenchmarkThroughput(b *testing.B) {
	pc, err := NewPairCredentials("bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	pcfg, bcfg := testCfg(), testCfg()
	pcfg.Auth, bcfg.Auth = mustAuth(b, pc, RoleSender), mustAuth(b, pc, RoleReceiver)
	for _, size := range []int{64, 4096} {
		b.Run(fmt.Sprintf("entry=%dB/plain", size), func(b *testing.B) {
			benchRate(b, newBenchPair(b, size, plainTCPCfg(), plainTCPCfg()))
		})
		b.Run(fmt.Sprintf("entry=%dB/tls", size), func(b *testing.B) {
			benchRate(b, newBenchPair(b, size, bcfg, pcfg))
		})
		b.Run(fmt.Sprintf("entry=%dB/tls-vs-plain", size), func(b *testing.B) {
			plain, secure := newBenchPair(b, size, plainTCPCfg(), plainTCPCfg()), newBenchPair(b, size, bcfg, pcfg)
			const rounds = 20
			var tPlain, tTLS, cpuPlain, cpuTLS time.Duration
			b.SetBytes(int64(2 * size))
			b.ResetTimer()
			for i := range rounds {
				n := b.N / rounds
				if i < b.N%rounds {
					n++
				}
				t0, c0 := time.Now(), processCPU(b)
				plain.send(b, n)
				t1, c1 := time.Now(), processCPU(b)
				secure.send(b, n)
				tPlain, tTLS = tPlain+t1.Sub(t0), tTLS+time.Since(t1)
				cpuPlain, cpuTLS = cpuPlain+c1-c0, cpuTLS+processCPU(b)-c1
			}
			b.StopTimer()
			b.ReportMetric(float64(tPlain)/float64(tTLS), "tls/plain")
			b.ReportMetric(float64(cpuTLS)/float64(max(cpuPlain, 1)), "cpu-tls/plain")
		})
	}
}

// processCPU is the CPU time (user and system) this process has used: both
// ends of a benchmark's channels run in it. Unlike wall time, it barely
// moves with load from other processes.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPair is a primary and a backup on loopback TCP whose backup
// replays (discards) whatever arrives.
type benchPair struct {
	s     *Sender
	entry []byte
}

func newBenchPair(b *testing.B, size int, bcfg, pcfg Config) *benchPair {
	ctx := context.Background()
	ln, err := Listen(ctx, "tcp", "127.0.0.1:0", bcfg)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	rc := make(chan *Receiver, 1)
	go func() {
		r, err := ln.Accept(ctx)
		if err != nil {
			b.Error(err)
		}
		rc <- r
	}()
	s, err := Dial(ctx, "tcp", ln.Addr().String(), pcfg)
	if err != nil {
		b.Fatal(err)
	}
	r := <-rc
	b.Cleanup(func() { s.Close(); r.Close() })
	go func() {
		for {
			seq, _, err := r.Next(ctx)
			if err != nil {
				return
			}
			if seq%256 == 0 {
				r.ReportReplayed(seq)
			}
		}
	}()
	return &benchPair{s: s, entry: make([]byte, size)}
}

// send appends n entries and waits until the last is acked.
func (p *benchPair) send(b *testing.B, n int) {
	ctx := context.Background()
	var last uint64
	for range n {
		var err error
		if last, err = p.s.Append(ctx, p.entry); err != nil {
			b.Fatal(err)
		}
	}
	p.s.Flush()
	if err := p.s.WaitAcked(ctx, last); err != nil {
		b.Fatal(err)
	}
}

func benchRate(b *testing.B, p *benchPair) {
	b.SetBytes(int64(len(p.entry)))
	b.ResetTimer()
	p.send(b, b.N)
	b.StopTimer()
	st := p.s.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(st.Entries)/float64(max(st.Batches, 1)), "entries/batch")
}

// slowFailingConn reads late and, once armed, fails every write with EPIPE:
// the backup's side of a primary that sent its close frame and hung up
// while the backup was about to ack.
type slowFailingConn struct {
	net.Conn
	armed atomic.Bool
}

func (c *slowFailingConn) Read(p []byte) (int, error) {
	if c.armed.Load() {
		time.Sleep(20 * time.Millisecond)
	}
	return c.Conn.Read(p)
}

func (c *slowFailingConn) Write(p []byte) (int, error) {
	if c.armed.Load() {
		return 0, syscall.EPIPE
	}
	return c.Conn.Write(p)
}

// TestCleanCloseWinsOverFailedAck: a write error on the receiver that races
// with the sender's clean close must still end as ErrPeerClosed, with every
// entry delivered (a backup would otherwise report its primary lost).
func TestCleanCloseWinsOverFailedAck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := net.Pipe()
	sb := &slowFailingConn{Conn: b}
	s, r, err := Connect(ctx, a, sb, Config{Timeout: 5 * time.Second}, Config{Timeout: 5 * time.Second, AckDelay: time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	sb.armed.Store(true)
	for i := 0; i < 10; i++ {
		if _, err := s.Append(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	go s.Close()
	for i := 0; i < 10; i++ {
		if _, e, err := r.Next(ctx); err != nil || e[0] != byte(i) {
			t.Fatalf("entry %d: %v %v", i, e, err)
		}
	}
	if _, _, err := r.Next(ctx); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("after the last entry: %v, want ErrPeerClosed", err)
	}
}

// TestReplayLagTimeBound: once the oldest entry the backup has not replayed
// is older than MaxReplayLagTime, Append waits until the backup reports
// replaying it; acks on receipt do not help.
func TestReplayLagTimeBound(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	cfg := testCfg()
	cfg.MaxReplayLagTime = 50 * time.Millisecond
	s, r, err := Pipe(ctx, cfg, testCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer s.Close()
	if _, err := s.Append(ctx, entryFor(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, entryFor(2)); err != nil {
		t.Fatal("a young lag blocked Append:", err)
	}
	if err := s.WaitAcked(ctx, 2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond) // entry 1 is now older than the bound
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, entryFor(3))
		done <- err
	}()
	waitFor(t, "Append to block on the lag's age", func() bool { return s.Stats().BlockedAppends == 1 })
	for i := 0; i < 2; i++ {
		if _, _, err := r.Next(ctx); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Append returned (%v) before the backup reported any replay", err)
	case <-time.After(20 * time.Millisecond):
	}
	r.ReportReplayed(2)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Append still blocked after the backup replayed everything")
	}
}
