package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ftvm/ftvm/internal/unixsock"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
)

// ErrFenced: a write or flush carried a generation older than the pair's
// record. The writer has been replaced and must stop.
var ErrFenced = errors.New("fenced")

// FencedError is a refused write or flush: Writer is the generation it
// carried, Current the record that replaced it.
type FencedError struct {
	Disk    string
	Op      string
	Writer  uint64
	Current arbiter.Record
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("storage server: %s of disk %q with generation %d refused: %v: %v",
		e.Op, e.Disk, e.Writer, ErrFenced, e.Current)
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

// Config configures a Server.
type Config struct {
	// Store holds the disk files; the server opens each disk (taking its
	// lock) at first use and keeps it open until Close.
	Store *storage.Store
	// Arbiter holds the pairs' records.
	Arbiter arbiter.Arbiter
	// ArbiterTimeout bounds one call to the arbiter; 0 means 5 s.
	ArbiterTimeout time.Duration
	Logger         *slog.Logger
}

// Server serves disks and the arbiter over stream connections.
type Server struct {
	store   *storage.Store
	arb     arbiter.Arbiter
	timeout time.Duration
	log     *slog.Logger

	mu     sync.Mutex
	fences map[string]*fence // by pair
	disks  map[string]*disk  // by disk name
	closed bool

	// Test hooks around the fence of a write or flush: beforeFence runs
	// before the generation check, insideFence after it has passed, with
	// the write about to happen.
	beforeFence, insideFence func(*request)
}

// fence orders one pair's writes against its claims: writes and flushes
// hold mu shared from the generation check to the end of the I/O, claims
// hold it exclusively (a refresh from the arbiter holds it only to adopt
// the record it read, never across the read). So a claim completes only
// after every write admitted under the old generation has landed, and no
// write of the old generation is admitted after it.
type fence struct {
	mu     sync.RWMutex
	rec    arbiter.Record
	loaded bool
}

type disk struct {
	d    *storage.Disk
	pair string // the pair it was first used by; others are refused
}

// New returns a server; Serve runs it.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Arbiter == nil {
		return nil, errors.New("storage server: a store and an arbiter are required")
	}
	if cfg.ArbiterTimeout <= 0 {
		cfg.ArbiterTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		store: cfg.Store, arb: cfg.Arbiter, timeout: cfg.ArbiterTimeout, log: cfg.Logger,
		fences: map[string]*fence{}, disks: map[string]*disk{},
	}, nil
}

// ServeUnix listens on the unix socket path and serves until ctx is done,
// then removes the socket. A socket file nobody answers on (left by a
// server that died) is replaced; one a live server answers on is an error.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	ln, err := unixsock.Listen(path)
	if err != nil {
		return fmt.Errorf("storage server: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx is done, then closes ln and
// every connection and returns nil. It closes ln in any case.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	defer ln.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.log.Info("storage server: listening", "addr", ln.Addr().String(), "dir", s.store.Dir())
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("storage server: accept on %s: %w", ln.Addr(), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, conn)
		}()
	}
}

// serveConn answers one connection's requests in order. A malformed
// request gets an error reply and the connection goes on; a malformed
// frame (its length) ends the connection after the reply, since the
// stream cannot be resynchronized.
func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReaderSize(conn, 64<<10)
	var in, out []byte
	for {
		body, err := readFrame(r, in)
		if err != nil {
			if errors.Is(err, ErrBadRequest) {
				conn.Write(encodeReply(out, 0, s.errorReply(0, err)))
			} else if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				s.log.Debug("storage server: connection ended", "err", err)
			}
			return
		}
		in = body
		req, err := decodeRequest(body)
		var rep *reply
		if err != nil {
			rep = s.errorReply(req.tag, err)
		} else {
			rep = s.handle(ctx, req)
		}
		out = encodeReply(out, req.op, rep)
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}

func (s *Server) handle(ctx context.Context, req *request) *reply {
	rep := &reply{tag: req.tag}
	var err error
	switch req.op {
	case opClaim:
		rep.rec, err = s.Claim(ctx, req.pair, req.name, req.gen)
	case opRecord:
		rep.rec, err = s.Record(ctx, req.pair)
	case opInfo:
		err = s.info(ctx, req, rep)
	case opRead:
		err = s.read(req, rep)
	case opWrite, opFlush:
		err = s.write(ctx, req)
	}
	if err != nil {
		return s.errorReply(req.tag, err)
	}
	return rep
}

// errorReply encodes err's kind, and the generations a fenced write or a
// lost claim carries, for the client to rebuild the same error.
func (s *Server) errorReply(tag uint32, err error) *reply {
	rep := &reply{tag: tag, msg: err.Error()}
	var fenced *FencedError
	var lost *arbiter.LostClaimError
	switch {
	case errors.As(err, &fenced):
		rep.status, rep.gen, rep.rec = codeFenced, fenced.Writer, fenced.Current
	case errors.As(err, &lost):
		rep.status, rep.gen, rep.rec = codeLostClaim, lost.Seen, lost.Current
	case errors.Is(err, ErrBadRequest):
		rep.status = codeBadRequest
	case errors.Is(err, storage.ErrNotFound):
		rep.status = codeNotFound
	case errors.Is(err, storage.ErrOutOfRange):
		rep.status = codeOutOfRange
	case errors.Is(err, arbiter.ErrUnreachable):
		rep.status = codeUnreachable
	case errors.Is(err, arbiter.ErrAhead):
		rep.status = codeAhead
	case errors.Is(err, arbiter.ErrInvalid):
		rep.status = codeInvalid
	default:
		rep.status = codeInternal
	}
	return rep
}

// Claim makes a claim through the server: the arbiter's test-and-set,
// done while no write of the pair is in progress or can start, so that
// once it returns no write carrying an older generation lands.
func (s *Server) Claim(ctx context.Context, pair, owner string, seen uint64) (arbiter.Record, error) {
	f, err := s.fence(pair)
	if err != nil {
		return arbiter.Record{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	rec, err := s.arb.Claim(ctx, pair, owner, seen)
	var lost *arbiter.LostClaimError
	switch {
	case err == nil:
		s.adopt(f, rec)
		s.log.Info("storage server: claim won", "pair", pair, "generation", rec.Generation, "owner", owner)
	case errors.As(err, &lost):
		s.adopt(f, lost.Current)
		s.log.Info("storage server: claim lost", "pair", pair, "seen", seen, "owner", owner, "record", lost.Current.String())
	}
	return rec, err
}

// Record returns the pair's record as the arbiter has it now.
func (s *Server) Record(ctx context.Context, pair string) (arbiter.Record, error) {
	f, err := s.fence(pair)
	if err != nil {
		return arbiter.Record{}, err
	}
	return s.refresh(ctx, f, pair)
}

// adopt moves the fence's record forward, never back: a record that went
// backwards at the arbiter (an etcd key deleted by hand) must not
// re-admit fenced writers. Called with f.mu held exclusively.
func (s *Server) adopt(f *fence, rec arbiter.Record) {
	if f.loaded && rec.Generation < f.rec.Generation {
		s.log.Warn("storage server: the arbiter's record went backwards; keeping the newer one",
			"pair", rec.Pair, "arbiter", rec.Generation, "kept", f.rec.Generation)
		return
	}
	f.rec, f.loaded = rec, true
}

// refresh reads the record from the arbiter and adopts it, returning the
// fence's record. Writes go on during the read: adopting is monotonic, so
// a read that raced a claim through this server changes nothing.
func (s *Server) refresh(ctx context.Context, f *fence, pair string) (arbiter.Record, error) {
	f.mu.RLock()
	before := f.rec.Generation
	f.mu.RUnlock()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rec, err := s.arb.Read(ctx, pair)
	if err != nil {
		return arbiter.Record{}, fmt.Errorf("storage server: read the record of pair %q: %w", pair, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// A claim through this server that completed during the read is
	// newer than what was read; only a record older than the one known
	// before the read went backwards.
	if !(f.rec.Generation > before && rec.Generation < f.rec.Generation) {
		s.adopt(f, rec)
	}
	return f.rec, nil
}

func (s *Server) fence(pair string) (*fence, error) {
	if err := arbiter.ValidatePair(pair); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fences[pair]
	if f == nil {
		f = &fence{}
		s.fences[pair] = f
	}
	return f, nil
}

// admitted runs io while holding the pair's fence shared, if gen is the
// pair's current generation. A generation ahead of the server's record
// (a claim made at the arbiter directly, not through this server) makes
// the server re-read the record first; one still ahead is refused.
func (s *Server) admitted(ctx context.Context, req *request, io func() error) error {
	f, err := s.fence(req.pair)
	if err != nil {
		return err
	}
	if s.beforeFence != nil {
		s.beforeFence(req)
	}
	for refreshed := false; ; refreshed = true {
		f.mu.RLock()
		if f.loaded && req.gen <= f.rec.Generation {
			defer f.mu.RUnlock()
			if req.gen < f.rec.Generation {
				return &FencedError{Disk: req.name, Op: opNames[req.op], Writer: req.gen, Current: f.rec}
			}
			if s.insideFence != nil {
				s.insideFence(req)
			}
			return io()
		}
		cur := f.rec.Generation
		f.mu.RUnlock()
		if refreshed {
			return fmt.Errorf("storage server: %s of disk %q with generation %d: %w (record of pair %q is at %d)",
				opNames[req.op], req.name, req.gen, arbiter.ErrAhead, req.pair, cur)
		}
		if _, err := s.refresh(ctx, f, req.pair); err != nil {
			return err
		}
	}
}

// disk returns the open disk name for pair, opening it at first use.
func (s *Server) disk(pair, name string) (*storage.Disk, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("storage server: shutting down")
	}
	if d := s.disks[name]; d != nil {
		if d.pair != pair {
			return nil, badRequest("disk %q is in use by pair %q, not %q", name, d.pair, pair)
		}
		return d.d, nil
	}
	d, err := s.store.OpenDisk(name)
	if err != nil {
		return nil, err
	}
	s.disks[name] = &disk{d: d, pair: pair}
	s.log.Info("storage server: disk opened", "disk", name, "pair", pair, "size", d.Size())
	return d, nil
}

// checkRange refuses a range outside the disk, without overflow: off and
// n are at most MaxSize and MaxIO (decodeRequest checked).
func checkRange(d *storage.Disk, req *request, n uint64) error {
	if size := uint64(d.Size()); req.off > size || n > size-req.off {
		return fmt.Errorf("storage server: %s of %d bytes at offset %d of disk %q: %w (size %d)",
			opNames[req.op], n, req.off, req.name, storage.ErrOutOfRange, size)
	}
	return nil
}

func (s *Server) info(ctx context.Context, req *request, rep *reply) error {
	d, err := s.disk(req.pair, req.name)
	if err != nil {
		return err
	}
	// A caller announcing a newer generation (it claimed at the arbiter)
	// makes the server catch up now, before that caller's first write.
	f, err := s.fence(req.pair)
	if err != nil {
		return err
	}
	f.mu.RLock()
	rep.rec, err = f.rec, nil
	stale := !f.loaded || req.gen > f.rec.Generation
	f.mu.RUnlock()
	if stale {
		if rep.rec, err = s.refresh(ctx, f, req.pair); err != nil {
			return err
		}
	}
	rep.size, rep.id = uint64(d.Size()), d.ID()
	return nil
}

func (s *Server) read(req *request, rep *reply) error {
	d, err := s.disk(req.pair, req.name)
	if err != nil {
		return err
	}
	if err := checkRange(d, req, uint64(req.n)); err != nil {
		return err
	}
	rep.data = make([]byte, req.n)
	_, err = d.ReadAt(rep.data, int64(req.off))
	return err
}

func (s *Server) write(ctx context.Context, req *request) error {
	d, err := s.disk(req.pair, req.name)
	if err != nil {
		return err
	}
	if req.op == opFlush {
		return s.admitted(ctx, req, d.Flush)
	}
	if err := checkRange(d, req, uint64(len(req.data))); err != nil {
		return err
	}
	return s.admitted(ctx, req, func() error {
		_, err := d.WriteAt(req.data, int64(req.off))
		return err
	})
}

// Close closes the disks. Call it after Serve has returned.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	for name, d := range s.disks {
		errs = append(errs, d.d.Close())
		delete(s.disks, name)
	}
	return errors.Join(errs...)
}
