package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
)

// ErrUnavailable: the storage server could not be reached, or the
// connection broke before its answer arrived.
var ErrUnavailable = errors.New("storage server unavailable")

// Client talks to a storage server. It is safe for concurrent use; its
// requests go one at a time over one connection, which it redials after a
// failure. It is an arbiter.Arbiter (claims and reads go through the
// server, which orders them against the pair's writes).
type Client struct {
	network, addr string

	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
	tag  uint32
	out  []byte
	in   []byte
}

var _ arbiter.Arbiter = (*Client)(nil)

// Dial connects to the server at addr ("unix" and a socket path, or "tcp"
// and host:port).
func Dial(ctx context.Context, network, addr string) (*Client, error) {
	c := &Client{network: network, addr: addr}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.dial(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) dial(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, c.network, c.addr)
	if err != nil {
		return fmt.Errorf("storage server at %s: %w: %w", c.addr, ErrUnavailable, err)
	}
	c.conn, c.rd = conn, bufio.NewReaderSize(conn, 64<<10)
	return nil
}

// Close closes the connection; a request in progress fails.
func (c *Client) Close() error {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil {
		return conn.Close()
	}
	return nil
}

// call sends req and returns its reply. Every request is idempotent (a
// write rewrites the same bytes, a claim by the same owner settles as its
// own), so a request whose connection failed is sent once more on a new
// one. A successful reply's data is only valid until the next call.
func (c *Client) call(ctx context.Context, req *request) (*reply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if c.conn == nil {
			if err = c.dial(ctx); err != nil {
				return nil, err
			}
		}
		var rep *reply
		rep, err = c.roundTrip(ctx, req)
		if err == nil {
			return rep, nil
		}
		c.conn.Close()
		c.conn = nil
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("storage server at %s: %s: %w: %w", c.addr, opNames[req.op], ErrUnavailable, err)
}

func (c *Client) roundTrip(ctx context.Context, req *request) (*reply, error) {
	c.tag++
	req.tag = c.tag
	conn := c.conn
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c.out = encodeRequest(c.out, req)
	if _, err := conn.Write(c.out); err != nil {
		return nil, err
	}
	body, err := readFrame(c.rd, c.in)
	if err != nil {
		return nil, err
	}
	c.in = body
	rep, err := decodeReply(body, req.op)
	if err != nil {
		return nil, err
	}
	// A request the server could not parse far enough is answered with tag 0.
	if rep.tag != req.tag && (rep.tag != 0 || rep.status == codeOK) {
		return nil, fmt.Errorf("reply to request %d answers %d", req.tag, rep.tag)
	}
	return rep, nil
}

// do runs a request and turns an error reply back into the error the
// server matched: *FencedError, *arbiter.LostClaimError, or one wrapping
// the same sentinel.
func (c *Client) do(ctx context.Context, req *request) (*reply, error) {
	rep, err := c.call(ctx, req)
	if err != nil {
		if req.op == opClaim || req.op == opRecord {
			return nil, fmt.Errorf("%w: %w", arbiter.ErrUnreachable, err)
		}
		return nil, err
	}
	if rep.status == codeOK {
		return rep, nil
	}
	kinds := map[byte]error{
		codeBadRequest: ErrBadRequest, codeNotFound: storage.ErrNotFound, codeOutOfRange: storage.ErrOutOfRange,
		codeUnreachable: arbiter.ErrUnreachable, codeAhead: arbiter.ErrAhead, codeInvalid: arbiter.ErrInvalid,
	}
	switch rep.status {
	case codeFenced:
		return nil, &FencedError{Disk: req.name, Op: opNames[req.op], Writer: rep.gen, Current: rep.rec}
	case codeLostClaim:
		return nil, &arbiter.LostClaimError{Seen: rep.gen, Current: rep.rec}
	}
	if kind := kinds[rep.status]; kind != nil {
		return nil, fmt.Errorf("storage server at %s: %w (%s)", c.addr, kind, rep.msg)
	}
	return nil, fmt.Errorf("storage server at %s: %s", c.addr, rep.msg)
}

// Claim implements arbiter.Arbiter through the server.
func (c *Client) Claim(ctx context.Context, pair, owner string, seen uint64) (arbiter.Record, error) {
	rep, err := c.do(ctx, &request{op: opClaim, pair: pair, name: owner, gen: seen})
	if err != nil {
		return arbiter.Record{}, err
	}
	return rep.rec, nil
}

// Read implements arbiter.Arbiter through the server.
func (c *Client) Read(ctx context.Context, pair string) (arbiter.Record, error) {
	rep, err := c.do(ctx, &request{op: opRecord, pair: pair})
	if err != nil {
		return arbiter.Record{}, err
	}
	return rep.rec, nil
}

// OpenDisk returns disk name of pair as the server serves it, writing
// with generation gen (see Disk.SetGeneration). It also returns the
// pair's current record. Announcing a gen newer than the server knows
// makes the server re-read the record from its arbiter.
func (c *Client) OpenDisk(ctx context.Context, pair, name string, gen uint64) (*Disk, arbiter.Record, error) {
	rep, err := c.do(ctx, &request{op: opInfo, pair: pair, name: name, gen: gen})
	if err != nil {
		return nil, arbiter.Record{}, err
	}
	d := &Disk{c: c, pair: pair, name: name, size: int64(rep.size), id: rep.id}
	d.gen.Store(gen)
	return d, rep.rec, nil
}

// Disk is a disk served by a storage server: a virtio-blk backend (ReadAt,
// WriteAt, Flush, Size, ID) whose writes and flushes carry the
// generation the writer holds. A write refused for an old generation
// fails with a *FencedError; the VMM must then stop, not retry.
type Disk struct {
	c          *Client
	pair, name string
	size       int64
	id         string
	gen        atomic.Uint64
}

// Name returns the disk's name.
func (d *Disk) Name() string { return d.name }

// Size returns the disk size in bytes.
func (d *Disk) Size() int64 { return d.size }

// ID returns the disk's device identifier.
func (d *Disk) ID() string { return d.id }

// Generation returns the generation writes carry.
func (d *Disk) Generation() uint64 { return d.gen.Load() }

// SetGeneration changes the generation writes carry: after winning a
// claim, to the claim's generation.
func (d *Disk) SetGeneration(gen uint64) { d.gen.Store(gen) }

// ReadAt reads len(p) bytes at off, in requests of at most MaxIO.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	return d.inPieces("read", p, off, func(piece []byte, at uint64) error {
		rep, err := d.c.do(context.Background(), &request{op: opRead, pair: d.pair, name: d.name, off: at, n: uint32(len(piece))})
		if err == nil && len(rep.data) != len(piece) {
			err = fmt.Errorf("storage server: read disk %q: %d bytes back for %d", d.name, len(rep.data), len(piece))
		}
		if err == nil {
			copy(piece, rep.data)
		}
		return err
	})
}

// WriteAt writes p at off, in requests of at most MaxIO each checked
// against the generation: a write that spans requests and is fenced
// between them is left partly done, which the writer that replaced this
// one overwrites anyway.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	return d.inPieces("write", p, off, func(piece []byte, at uint64) error {
		_, err := d.c.do(context.Background(), &request{op: opWrite, pair: d.pair, name: d.name, gen: d.gen.Load(), off: at, data: piece})
		return err
	})
}

// inPieces calls do for each piece of p of at most MaxIO bytes, with its
// offset on the disk, and returns how many bytes the pieces done cover.
func (d *Disk) inPieces(op string, p []byte, off int64, do func(piece []byte, at uint64) error) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("storage server: %s disk %q at offset %d: %w", op, d.name, off, storage.ErrOutOfRange)
	}
	for done := 0; done < len(p); {
		end := done + min(len(p)-done, MaxIO)
		if err := do(p[done:end], uint64(off)+uint64(done)); err != nil {
			return done, err
		}
		done = end
	}
	return len(p), nil
}

// Flush makes the disk's completed writes durable, if the generation is
// still current.
func (d *Disk) Flush() error {
	_, err := d.c.do(context.Background(), &request{op: opFlush, pair: d.pair, name: d.name, gen: d.gen.Load()})
	return err
}
