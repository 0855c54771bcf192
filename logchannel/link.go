package logchannel

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Errors a log channel ends with. Err() wraps exactly one of them, so
// callers (package failover) can tell a clean shutdown from a crash from a
// garbled stream with errors.Is.
var (
	// ErrClosed: this end called Close.
	ErrClosed = errors.New("logchannel: closed")
	// ErrPeerClosed: the peer sent a close frame (clean shutdown).
	ErrPeerClosed = errors.New("logchannel: peer closed the channel cleanly")
	// ErrPeerLost: the connection ended (EOF, reset) without a close frame.
	ErrPeerLost = errors.New("logchannel: peer connection lost")
	// ErrPeerSilent: nothing was heard from the peer within the timeout.
	ErrPeerSilent = errors.New("logchannel: peer silent")
	// ErrCorrupt: a frame failed its checksum, bounds or sequence checks.
	ErrCorrupt = errors.New("logchannel: corrupt stream")
	// ErrHandshake: the handshake failed (wrong magic, role, session...).
	ErrHandshake = errors.New("logchannel: handshake failed")
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = errors.New("logchannel: protocol version mismatch")
)

// Config tunes one end of a log channel. The zero value is usable: every
// zero field takes the default named in its comment. Fields that concern
// only the other role are ignored.
type Config struct {
	// Session identifies the primary/backup pair and Generation the
	// failover epoch; both ends must agree or the handshake fails.
	Session    uint64
	Generation uint64

	// HeartbeatInterval between heartbeats, both ways (default 50ms).
	HeartbeatInterval time.Duration
	// Timeout: silence from the peer beyond this fails the channel
	// (default 500ms).
	Timeout time.Duration

	// Sender: a batch is sent when it reaches MaxBatchBytes (default
	// 64 KiB) or MaxBatchEntries (default 1024), or Linger (default 200µs)
	// after its first entry, or on Flush.
	MaxBatchBytes   int
	MaxBatchEntries int
	Linger          time.Duration
	// Sender: Append blocks while unacked bytes exceed Window (default
	// 8 MiB), while appended-minus-replayed entries reach MaxReplayLag
	// (0: no bound), or while the oldest entry the backup has not replayed
	// was appended more than MaxReplayLagTime ago (0: no bound). The last
	// bounds how far behind a backup can fall, and so how long it takes to
	// catch up before it can go live.
	Window           int
	MaxReplayLag     uint64
	MaxReplayLagTime time.Duration

	// Receiver: acks go out as soon as AckEvery (default 256) entries are
	// unacked, else AckDelay (default 100µs) after the first unacked one.
	AckEvery int
	AckDelay time.Duration

	// Auth authenticates both ends with mutual TLS (see LoadAuth). Dial
	// and Listen refuse TCP without it unless InsecureTCP is set, which
	// only tests and benchmarks on loopback do. Unix sockets need neither.
	Auth        *Auth
	InsecureTCP bool
	// HandshakeTimeout bounds Dial's connecting and handshake and each of
	// Accept's handshakes, so a peer that connects and stays silent cannot
	// hold a listener (default 10s).
	HandshakeTimeout time.Duration

	// Logger (default slog.Default()).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HeartbeatInterval, 50*time.Millisecond)
	def(&c.Timeout, 500*time.Millisecond)
	def(&c.Linger, 200*time.Microsecond)
	def(&c.AckDelay, 100*time.Microsecond)
	def(&c.HandshakeTimeout, 10*time.Second)
	defInt(&c.MaxBatchBytes, 64<<10)
	defInt(&c.MaxBatchEntries, 1024)
	defInt(&c.Window, 8<<20)
	defInt(&c.AckEvery, 256)
	if c.MaxBatchBytes > MaxFramePayload-batchHeaderSize-4-MaxEntrySize {
		c.MaxBatchBytes = MaxFramePayload - batchHeaderSize - 4 - MaxEntrySize
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// link owns one connection: the handshake, the single reader goroutine's
// frame decoding, serialized writes, heartbeats, RTT estimation and the
// failure detector. Sender and Receiver build their protocol on it.
type link struct {
	cfg   Config
	role  Role
	conn  net.Conn
	br    *bufio.Reader
	log   *slog.Logger
	epoch time.Time

	ctx    context.Context // cancelled when the link fails or closes
	cancel context.CancelFunc
	wg     sync.WaitGroup

	done      chan struct{}
	hbKick    chan struct{}
	closing   atomic.Bool
	closeOnce sync.Once
	errOnce   sync.Once
	err       error // set once, before done is closed

	// wmu serializes writes; the heartbeat path only TryLocks it, because a
	// write already in progress proves liveness and a blocked one must not
	// stall the failure detector.
	wmu sync.Mutex
	bw  *bufio.Writer

	lastHeard atomic.Int64 // ns since epoch
	// writeFailed: a write failed and writeErr is waiting for the reader.
	writeFailed atomic.Bool

	hbMu        sync.Mutex
	peerHBSent  uint64 // SentAt of the last heartbeat from the peer
	peerHBAt    int64  // when we received it (ns since epoch)
	srtt        time.Duration
	hbSent      atomic.Uint64
	hbRecv      atomic.Uint64
	framesSent  atomic.Uint64
	batches     atomic.Uint64
	framesRecvd atomic.Uint64

	// sampleLag, set by the link's owner before start, is called from the
	// watchdog at every check to feed the owner's lag window.
	sampleLag func(now int64)
}

func (l *link) now() int64 { return int64(time.Since(l.epoch)) + 1 }

// handshake exchanges hellos on conn and checks the peer's. Both sides
// write concurrently with reading because net.Pipe has no buffering.
func handshake(ctx context.Context, conn net.Conn, cfg Config, role Role) error {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() { // it fired: lift the deadline it set
			conn.SetDeadline(time.Time{})
		}
	}()
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(AppendHello(nil, Hello{Version: ProtocolVersion, Role: role, Session: cfg.Session, Generation: cfg.Generation}))
		werr <- err
	}()
	buf := make([]byte, helloSize)
	// Read the fixed prefix first so a peer of another version (whose
	// hello may be shorter) still gets the version error.
	_, rerr := io.ReadFull(conn, buf[:5])
	if rerr == nil {
		rerr = checkHelloPrefix(buf[:5])
	}
	if rerr == nil {
		_, rerr = io.ReadFull(conn, buf[5:])
	}
	var err error
	if rerr != nil {
		err = helloReadError(conn, buf[:5], rerr)
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", err, ctx.Err())
		}
		conn.Close() // unblocks the writer
		<-werr
		return err
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("%w: writing hello: %w", ErrHandshake, err)
	}
	h, err := DecodeHello(buf)
	if err != nil {
		return err
	}
	want := RoleReceiver
	if role == RoleReceiver {
		want = RoleSender
	}
	switch {
	case h.Role != want:
		return fmt.Errorf("%w: peer role %v, want %v", ErrHandshake, h.Role, want)
	case h.Session != cfg.Session:
		return fmt.Errorf("%w: peer session %#x, want %#x", ErrHandshake, h.Session, cfg.Session)
	case h.Generation != cfg.Generation:
		return fmt.Errorf("%w: peer generation %d, want %d", ErrHandshake, h.Generation, cfg.Generation)
	}
	return nil
}

// helloReadError says why the peer's hello could not be read. On TLS,
// the peer refusing our certificate shows up here; on a plain conn, a
// peer that answers in TLS, or hangs up, may want credentials.
func helloReadError(conn net.Conn, prefix []byte, err error) error {
	if _, isTLS := conn.(*tls.Conn); isTLS {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "remote error" {
			return tlsFailure(err)
		}
	} else if errors.Is(err, ErrHandshake) && looksLikeTLS(prefix) {
		return &authError{err: errors.New("the peer speaks TLS and this end has no credentials (Config.Auth)")}
	}
	if errors.Is(err, ErrVersion) || errors.Is(err, ErrHandshake) {
		return err
	}
	err = fmt.Errorf("%w: reading peer hello: %w", ErrHandshake, err)
	if _, isTLS := conn.(*tls.Conn); !isTLS && conn.RemoteAddr() != nil && conn.RemoteAddr().Network() == "tcp" {
		err = fmt.Errorf("%w (if the peer requires authentication, give this end the pair's credentials, Config.Auth)", err)
	}
	return err
}

func newLink(ctx context.Context, conn net.Conn, cfg Config, role Role) (*link, error) {
	cfg = cfg.withDefaults()
	conn, err := secure(ctx, conn, cfg, role)
	if err == nil {
		err = handshake(ctx, conn, cfg, role)
	}
	if err != nil {
		conn.Close()
		if ae := (*authError)(nil); errors.As(err, &ae) {
			ae.role, ae.peer = role, conn.RemoteAddr()
			return nil, ae
		}
		return nil, fmt.Errorf("logchannel: %v with %v: %w", role, conn.RemoteAddr(), err)
	}
	// The link's lifetime is its own (until Close or failure), not the
	// handshake context's.
	lctx, cancel := context.WithCancel(context.Background())
	l := &link{
		cfg:    cfg,
		role:   role,
		conn:   conn,
		br:     bufio.NewReaderSize(conn, 64<<10),
		bw:     bufio.NewWriterSize(conn, 64<<10),
		log:    cfg.Logger.With("component", "logchannel", "role", role.String(), "session", cfg.Session, "generation", cfg.Generation),
		epoch:  time.Now(),
		ctx:    lctx,
		cancel: cancel,
		done:   make(chan struct{}),
		hbKick: make(chan struct{}, 1),
	}
	l.lastHeard.Store(l.now())
	l.log.Debug("log channel established", "peer", conn.RemoteAddr())
	return l, nil
}

// start launches the watchdog and the heartbeat goroutine; the owner
// launches its reader and writer.
func (l *link) start() {
	l.wg.Add(2)
	go l.watchdog()
	go l.heartbeater()
}

// heartbeater sends a heartbeat per kick from the watchdog. It is separate
// because a write can block on a peer that stopped reading, and the
// watchdog must keep running to detect exactly that.
func (l *link) heartbeater() {
	defer l.wg.Done()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-l.hbKick:
			l.sendHeartbeat()
		}
	}
}

// fail ends the link with err (first error wins) and tears the connection
// down, which unblocks the reader and any writer.
func (l *link) fail(err error) {
	l.errOnce.Do(func() {
		if l.closing.Load() {
			// Whatever broke after we started closing (typically the peer
			// hanging up in answer to our close frame) is part of Close.
			err = ErrClosed
		}
		l.err = err
		close(l.done)
		l.cancel()
		l.conn.Close()
		if errors.Is(err, ErrClosed) || errors.Is(err, ErrPeerClosed) {
			l.log.Info("log channel closed", "reason", err)
		} else {
			l.log.Warn("log channel failed", "err", err)
		}
	})
}

// failed returns the link's error if it has ended.
func (l *link) failed() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// readerError classifies an error from the reader goroutine. seq is the
// next sequence number a batch would carry (receiver) and where describes
// the stream position in words.
func (l *link) readerError(err error, seq uint64, where string) error {
	var ce *crcError
	switch {
	case errors.As(err, &ce) && ce.typ == FrameBatch:
		return fmt.Errorf("%w: CRC-32C mismatch in batch frame at seq %d (got %08x, computed %08x)", ErrCorrupt, seq, ce.got, ce.want)
	case errors.Is(err, ErrCorrupt):
		return fmt.Errorf("%w (stream position: %s)", err, where)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: EOF without a close frame (%s)", ErrPeerLost, where)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: EOF in the middle of a frame (%s)", ErrPeerLost, where)
	}
	return fmt.Errorf("%w: read: %w (%s)", ErrPeerLost, err, where)
}

// heard records that a frame arrived.
func (l *link) heard() {
	l.lastHeard.Store(l.now())
	l.framesRecvd.Add(1)
}

func (l *link) onHeartbeat(f *Frame) {
	now := l.now()
	l.hbRecv.Add(1)
	l.hbMu.Lock()
	defer l.hbMu.Unlock()
	l.peerHBSent, l.peerHBAt = f.SentAt, now
	if f.EchoSentAt == 0 {
		return
	}
	sample := time.Duration(now - int64(f.EchoSentAt) - int64(f.EchoHold))
	if sample < 0 {
		return
	}
	if l.srtt == 0 {
		l.srtt = sample
	} else {
		l.srtt += (sample - l.srtt) / 8
	}
}

func (l *link) rtt() time.Duration {
	l.hbMu.Lock()
	defer l.hbMu.Unlock()
	return l.srtt
}

// writeLocked encodes and writes frames; the caller holds wmu.
func (l *link) writeLocked(frames ...*Frame) error {
	var buf [64]byte
	for _, f := range frames {
		b, err := AppendFrame(buf[:0], f)
		if err != nil {
			return err
		}
		if _, err := l.bw.Write(b); err != nil {
			return err
		}
		l.framesSent.Add(1)
	}
	return l.bw.Flush()
}

// writeErr handles a failed write. A peer that closed cleanly sends its
// close frame and hangs up; a write of ours (an ack, a heartbeat) racing
// with that fails with EPIPE before our reader got to the close frame. So
// the reader, which sees either the close frame or the bare EOF of a crash,
// gets a moment to say which it was; only if it says nothing does the write
// error end the link.
func (l *link) writeErr(err error) {
	if l.failed() != nil || !l.writeFailed.CompareAndSwap(false, true) {
		return
	}
	go func() {
		t := time.NewTimer(min(writeErrGrace, l.cfg.Timeout))
		defer t.Stop()
		select {
		case <-l.done:
		case <-t.C:
			l.fail(fmt.Errorf("%w: write: %w", ErrPeerLost, err))
		}
	}()
}

// writeErrGrace bounds how long a failed write waits for the reader to
// explain it (see writeErr).
const writeErrGrace = 500 * time.Millisecond

func (l *link) sendHeartbeat() {
	if !l.wmu.TryLock() {
		return
	}
	defer l.wmu.Unlock()
	now := l.now()
	f := Frame{Type: FrameHeartbeat, SentAt: uint64(now)}
	l.hbMu.Lock()
	if l.peerHBSent != 0 {
		f.EchoSentAt, f.EchoHold = l.peerHBSent, uint64(now-l.peerHBAt)
	}
	l.hbMu.Unlock()
	if err := l.writeLocked(&f); err != nil {
		l.writeErr(err)
		return
	}
	l.hbSent.Add(1)
}

// watchdog sends heartbeats and fails the link when the peer is silent.
// It checks more often than it sends so detection latency stays a small
// fraction of the timeout.
func (l *link) watchdog() {
	defer l.wg.Done()
	check := min(l.cfg.HeartbeatInterval, l.cfg.Timeout/8)
	t := time.NewTicker(check)
	defer t.Stop()
	nextHB := time.Now()
	for {
		select {
		case <-l.ctx.Done():
			return
		case now := <-t.C:
			age := time.Duration(l.now() - l.lastHeard.Load())
			if age > l.cfg.Timeout {
				l.fail(fmt.Errorf("%w: nothing heard for %v (timeout %v)", ErrPeerSilent, age.Round(time.Millisecond), l.cfg.Timeout))
				return
			}
			if !now.Before(nextHB) {
				nextHB = now.Add(l.cfg.HeartbeatInterval)
				signal(l.hbKick)
			}
			if l.sampleLag != nil {
				l.sampleLag(l.now())
			}
		}
	}
}

// shutdown sends final frames and a close frame, then ends the link and
// waits for its goroutines. The write runs in a goroutine bounded by the
// timeout (at most a second) so that a frozen peer (or a writer stuck holding wmu) cannot
// hang Close; failing the link closes the conn, which unblocks it.
func (l *link) shutdown(final func() error) error {
	l.closeOnce.Do(func() { l.closeFrame(final) })
	l.wg.Wait()
	return nil
}

func (l *link) closeFrame(final func() error) {
	if l.failed() == nil {
		l.closing.Store(true)
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			l.wmu.Lock()
			defer l.wmu.Unlock()
			if l.failed() != nil {
				return
			}
			l.conn.SetWriteDeadline(time.Now().Add(l.cfg.Timeout))
			err := final()
			if err == nil {
				err = l.writeLocked(&Frame{Type: FrameClose, Reason: "closed by " + l.role.String()})
			}
			if err != nil {
				l.log.Debug("close frame not sent", "err", err)
			}
		}()
		t := time.NewTimer(min(l.cfg.Timeout, time.Second))
		select {
		case <-sent:
		case <-t.C:
		}
		t.Stop()
		l.fail(ErrClosed)
		<-sent
	}
}
