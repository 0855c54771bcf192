package raft

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Transport carries one peer's outgoing RPCs: an encoded request to peer,
// the encoded reply back. An error means no reply (lost, timed out,
// unreachable); Raft retries on its own schedule.
type Transport interface {
	Call(ctx context.Context, peer int, req []byte) ([]byte, error)
}

// Handler answers encoded requests; *Raft is one (HandleRPC), and the
// raftkv server another.
type Handler interface {
	HandleRPC(ctx context.Context, req []byte) ([]byte, error)
}

// TCP framing: every request and reply is a uint32 little-endian length
// followed by that many bytes. A connection carries one call at a time;
// a client keeps a few idle connections per server for reuse.

func writeFrame(w io.Writer, b []byte) error {
	if len(b) > MaxMessage {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(b), MaxMessage)
	}
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// readFrame reads one frame. The length is checked before allocating.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > MaxMessage {
		return nil, fmt.Errorf("%w: frame length %d exceeds %d", ErrMalformed, n, MaxMessage)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("read frame of %d bytes: %w", n, err)
	}
	return b, nil
}

// DefaultCallTimeout bounds a TCP call whose context has no deadline.
const DefaultCallTimeout = 10 * time.Second

// TCPClient calls one server.
type TCPClient struct {
	addr   string
	mu     sync.Mutex
	idle   []net.Conn
	closed bool
}

const maxIdleConns = 4

func NewTCPClient(addr string) *TCPClient { return &TCPClient{addr: addr} }

// Call sends req and waits for the reply until ctx ends.
func (c *TCPClient) Call(ctx context.Context, req []byte) ([]byte, error) {
	conn, err := c.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("call %s: %w", c.addr, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultCallTimeout)
	}
	conn.SetDeadline(deadline)
	// A cancellation before the deadline unblocks the read too.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	reply, err := roundTrip(conn, req)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("call %s: %w", c.addr, err)
	}
	c.release(conn)
	return reply, nil
}

func roundTrip(conn net.Conn, req []byte) ([]byte, error) {
	if err := writeFrame(conn, req); err != nil {
		return nil, err
	}
	return readFrame(conn)
}

func (c *TCPClient) conn(ctx context.Context) (net.Conn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, net.ErrClosed
	}
	if n := len(c.idle); n > 0 {
		conn := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return conn, nil
	}
	c.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", c.addr)
}

func (c *TCPClient) release(conn net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || len(c.idle) >= maxIdleConns {
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	c.idle = append(c.idle, conn)
}

// Close closes the idle connections; calls in flight finish on their own.
func (c *TCPClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, conn := range c.idle {
		conn.Close()
	}
	c.idle = nil
	return nil
}

// TCPTransport is a Transport over TCP: one TCPClient per peer.
type TCPTransport struct {
	peers []*TCPClient
}

// NewTCPTransport returns a transport to the peers at addrs (indexed by
// peer id; this peer's own entry is never called).
func NewTCPTransport(addrs []string) *TCPTransport {
	t := &TCPTransport{}
	for _, a := range addrs {
		t.peers = append(t.peers, NewTCPClient(a))
	}
	return t
}

func (t *TCPTransport) Call(ctx context.Context, peer int, req []byte) ([]byte, error) {
	if peer < 0 || peer >= len(t.peers) {
		return nil, fmt.Errorf("call peer %d: no such peer (have %d)", peer, len(t.peers))
	}
	return t.peers[peer].Call(ctx, req)
}

func (t *TCPTransport) Close() error {
	for _, c := range t.peers {
		c.Close()
	}
	return nil
}

// ServeTCP answers framed requests on ln with h until ctx ends or ln
// fails, then closes every connection and waits for their goroutines. A
// handler error closes that connection, which the caller sees as a failed
// call. It returns nil after a cancellation.
func ServeTCP(ctx context.Context, ln net.Listener, h Handler) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
		conns = nil
	}
	stop := context.AfterFunc(ctx, func() { ln.Close(); closeAll() })
	defer stop()
	var err error
	for {
		var c net.Conn
		if c, err = ln.Accept(); err != nil {
			break
		}
		mu.Lock()
		if conns == nil {
			mu.Unlock()
			c.Close()
			continue
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			serveConn(ctx, c, h)
			c.Close()
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		})
	}
	ln.Close()
	closeAll()
	wg.Wait()
	if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("serve rpc: accept: %w", err)
}

// replyTimeout bounds writing a reply to a client that stopped reading.
const replyTimeout = 10 * time.Second

func serveConn(ctx context.Context, c net.Conn, h Handler) {
	r := bufio.NewReader(c)
	for {
		req, err := readFrame(r)
		if err != nil {
			return
		}
		reply, err := h.HandleRPC(ctx, req)
		if err != nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(replyTimeout))
		if err := writeFrame(c, reply); err != nil {
			return
		}
	}
}
