package raft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Network is an in-process network for tests: it carries encoded
// messages between registered handlers, and can drop, delay, reorder and
// partition them. A peer without a handler (crashed) answers nothing.
// Messages are copied, so peers share no memory through it.
type Network struct {
	mu        sync.Mutex
	rng       *rand.Rand
	handlers  []Handler
	connected []bool
	group     []int // peers talk only within their group
	// unreliable: requests and replies are each dropped with 10%
	// probability and delayed up to 27 ms (which also reorders them).
	unreliable bool
	// longReordering: a request is sometimes held back 100-600 ms, past
	// its sender's timeout, so it arrives after newer ones.
	longReordering bool
	counts         map[Kind]int
	bytes          int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// ErrUnreachable is what a Network call returns when no reply comes back.
var ErrUnreachable = errors.New("peer unreachable")

// NewNetwork returns a reliable, fully connected network of n endpoints.
func NewNetwork(n int, seed uint64) *Network {
	nw := &Network{
		rng:       rand.New(rand.NewPCG(seed, 0x6e6574)),
		handlers:  make([]Handler, n),
		connected: make([]bool, n),
		group:     make([]int, n),
		counts:    map[Kind]int{},
	}
	for i := range nw.connected {
		nw.connected[i] = true
	}
	nw.ctx, nw.cancel = context.WithCancel(context.Background())
	return nw
}

// Close stops message delivery and waits for every message in flight.
func (nw *Network) Close() {
	nw.cancel()
	nw.wg.Wait()
}

// Register sets the handler answering messages to peer; nil makes the
// peer silent, as a crashed one.
func (nw *Network) Register(peer int, h Handler) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.handlers[peer] = h
}

// Connect and Disconnect attach and detach a peer from the network.
func (nw *Network) Connect(peer int)    { nw.setConnected(peer, true) }
func (nw *Network) Disconnect(peer int) { nw.setConnected(peer, false) }

func (nw *Network) setConnected(peer int, v bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.connected[peer] = v
}

// Partition splits the peers into groups that cannot talk to each other;
// peers in no group form one more group. Partition() heals.
func (nw *Network) Partition(groups ...[]int) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for i := range nw.group {
		nw.group[i] = 0
	}
	for g, members := range groups {
		for _, p := range members {
			nw.group[p] = g + 1
		}
	}
}

func (nw *Network) SetUnreliable(v bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.unreliable = v
}

func (nw *Network) SetLongReordering(v bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.longReordering = v
}

// Count returns how many requests of kind were sent, delivered or not.
func (nw *Network) Count(k Kind) int {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.counts[k]
}

// Total returns how many requests were sent and their bytes.
func (nw *Network) Total() (requests, bytes int) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, c := range nw.counts {
		requests += c
	}
	return requests, nw.bytes
}

// Endpoint returns the Transport of peer from.
func (nw *Network) Endpoint(from int) Transport { return endpoint{nw, from} }

// Client returns a caller from outside the peers (a service's client) to
// peer to; it sees partitions only through the peer's Connect state.
func (nw *Network) Client(to int) func(ctx context.Context, req []byte) ([]byte, error) {
	return func(ctx context.Context, req []byte) ([]byte, error) { return nw.call(ctx, -1, to, req) }
}

type endpoint struct {
	nw   *Network
	from int
}

func (e endpoint) Call(ctx context.Context, peer int, req []byte) ([]byte, error) {
	return e.nw.call(ctx, e.from, peer, req)
}

// linked reports whether from can reach to now; from -1 is an outside
// client.
func (nw *Network) linked(from, to int) bool {
	if to < 0 || to >= len(nw.connected) || !nw.connected[to] {
		return false
	}
	return from < 0 || (nw.connected[from] && nw.group[from] == nw.group[to])
}

type delivery struct {
	reply []byte
	err   error
}

func (nw *Network) call(ctx context.Context, from, to int, req []byte) ([]byte, error) {
	nw.mu.Lock()
	nw.counts[MessageKind(req)]++
	nw.bytes += len(req)
	unreliable, longReorder := nw.unreliable, nw.longReordering
	delay := time.Duration(0)
	if unreliable {
		delay = time.Duration(nw.rng.IntN(27)) * time.Millisecond
	}
	dropReq := unreliable && nw.rng.IntN(10) == 0
	dropReply := unreliable && nw.rng.IntN(10) == 0
	if longReorder && nw.rng.IntN(4) == 0 {
		delay = 100*time.Millisecond + time.Duration(nw.rng.IntN(500))*time.Millisecond
	}
	closed := nw.ctx.Err() != nil
	nw.mu.Unlock()
	if closed {
		return nil, ErrUnreachable
	}

	done := make(chan delivery, 1)
	nw.wg.Add(1)
	go func() {
		defer nw.wg.Done()
		done <- nw.deliver(from, to, bytes.Clone(req), delay, dropReq, dropReply)
	}()
	select {
	case d := <-done:
		return d.reply, d.err
	case <-ctx.Done():
		return nil, fmt.Errorf("call peer %d: %w", to, ctx.Err())
	}
}

// deliver runs one request through the network and the handler, and
// returns what comes back (or ErrUnreachable after what a real network
// would take to lose it).
func (nw *Network) deliver(from, to int, req []byte, delay time.Duration, dropReq, dropReply bool) delivery {
	if !nw.sleep(delay) {
		return delivery{err: ErrUnreachable}
	}
	nw.mu.Lock()
	h := nw.handlers[to]
	ok := nw.linked(from, to) && h != nil && !dropReq
	nw.mu.Unlock()
	if !ok {
		// A lost message is noticed only by a timeout; a short random
		// wait stands for it without making callers spin.
		nw.sleep(time.Duration(10+rand.IntN(40)) * time.Millisecond)
		return delivery{err: ErrUnreachable}
	}
	reply, err := h.HandleRPC(nw.ctx, req)
	if err != nil {
		return delivery{err: fmt.Errorf("peer %d: %w", to, err)}
	}
	nw.mu.Lock()
	// The reply crosses the network too: it is lost if the link went
	// down meanwhile.
	ok = nw.linked(from, to) && !dropReply
	nw.mu.Unlock()
	if !ok {
		return delivery{err: ErrUnreachable}
	}
	return delivery{reply: reply}
}

// sleep waits d unless the network closes first.
func (nw *Network) sleep(d time.Duration) bool {
	if d <= 0 {
		return nw.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-nw.ctx.Done():
		return false
	}
}
