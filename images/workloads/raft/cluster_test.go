package raft

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Test timing: faster than the defaults so the suite stays short, with
// margins that hold under -race on two busy cores.
const (
	testElection  = 200 * time.Millisecond
	testHeartbeat = 40 * time.Millisecond
	testRPC       = 80 * time.Millisecond
)

// soak reports whether the long variants should run ($FTVM_SOAK set, as
// for the replication soak test).
func soak() bool { return os.Getenv("FTVM_SOAK") != "" }

// cluster runs n peers on a Network and checks, as every peer applies,
// that no two peers ever apply different commands at one index and that
// each applies indices in order.
type cluster struct {
	t          *testing.T
	n          int
	net        *Network
	persisters []*MemoryPersister
	// snapshotEvery: peers' services snapshot every this many applied
	// entries (0: never).
	snapshotEvery int

	mu        sync.Mutex
	peers     []*Raft
	consumers []chan struct{} // closed when peer i's apply consumer ends
	committed map[int]string  // index -> command, as first applied anywhere
	applied   []int           // last index applied by each peer's service
	maxIndex  int
	failure   error
	conn      []bool // what the test connected, for leader checks
	// rejections counts AppendEntries answered with Success false.
	rejections atomic.Int64
}

type rejectionCounter struct {
	h Handler
	n *atomic.Int64
}

func (r rejectionCounter) HandleRPC(ctx context.Context, req []byte) ([]byte, error) {
	reply, err := r.h.HandleRPC(ctx, req)
	if err == nil && MessageKind(reply) == KindAppendEntriesReply {
		var m AppendEntriesReply
		if decodeAs(reply, &m) == nil && !m.Success {
			r.n.Add(1)
		}
	}
	return reply, err
}

func newCluster(t *testing.T, n int, snapshotEvery int) *cluster {
	t.Helper()
	c := &cluster{
		t:             t,
		n:             n,
		net:           NewNetwork(n, rand.Uint64()),
		snapshotEvery: snapshotEvery,
		peers:         make([]*Raft, n),
		consumers:     make([]chan struct{}, n),
		committed:     map[int]string{},
		applied:       make([]int, n),
		conn:          all(n),
	}
	for range n {
		c.persisters = append(c.persisters, NewMemoryPersister())
	}
	for i := range n {
		c.start(i)
	}
	t.Cleanup(c.cleanup)
	return c
}

func (c *cluster) cleanup() {
	for i := range c.n {
		c.crash(i)
	}
	c.net.Close()
	c.checkFailure()
}

func (c *cluster) checkFailure() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failure != nil {
		c.t.Fatal(c.failure)
	}
}

func (c *cluster) fail(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failure == nil {
		c.failure = fmt.Errorf(format, args...)
	}
}

// start (re)starts peer i from its persister.
func (c *cluster) start(i int) {
	c.t.Helper()
	rf, err := New(context.Background(), Config{
		ID: i, Peers: c.n,
		Transport:         c.net.Endpoint(i),
		Persister:         c.persisters[i],
		ElectionTimeout:   testElection,
		HeartbeatInterval: testHeartbeat,
		RPCTimeout:        testRPC,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.peers[i] = rf
	c.consumers[i] = done
	c.applied[i] = 0
	c.mu.Unlock()
	c.net.Register(i, rejectionCounter{rf, &c.rejections})
	go func() {
		defer close(done)
		c.consume(i, rf)
	}()
}

// crash stops peer i; its persister keeps what it saved.
func (c *cluster) crash(i int) {
	c.mu.Lock()
	rf, done := c.peers[i], c.consumers[i]
	c.peers[i] = nil
	c.mu.Unlock()
	if rf == nil {
		return
	}
	c.net.Register(i, nil)
	rf.Kill()
	<-done
}

// The test service's snapshot is the list of all commands applied so
// far, so a peer restored from one can still be checked entry by entry.
func encodeTestSnapshot(cmds []string) []byte {
	var b []byte
	for _, s := range cmds {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func decodeTestSnapshot(b []byte) ([]string, error) {
	var cmds []string
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, fmt.Errorf("bad test snapshot")
		}
		cmds = append(cmds, string(b[k:k+int(n)]))
		b = b[k+int(n):]
	}
	return cmds, nil
}

func (c *cluster) consume(i int, rf *Raft) {
	var cmds []string // cmds[k] is the command at index k+1
	for m := range rf.Apply() {
		switch {
		case m.SnapshotValid:
			got, err := decodeTestSnapshot(m.Snapshot)
			if err != nil || len(got) != m.SnapshotIndex {
				c.fail("peer %d: snapshot at %d holds %d commands (%v)", i, m.SnapshotIndex, len(got), err)
				continue
			}
			if m.SnapshotIndex <= len(cmds) {
				c.fail("peer %d: snapshot at %d after applying %d", i, m.SnapshotIndex, len(cmds))
			}
			cmds = got
			for k, cmd := range cmds {
				c.check(i, k+1, cmd)
			}
		case m.CommandValid:
			if m.CommandIndex != len(cmds)+1 {
				c.fail("peer %d: applied index %d after %d", i, m.CommandIndex, len(cmds))
				continue
			}
			cmds = append(cmds, string(m.Command))
			c.check(i, m.CommandIndex, string(m.Command))
			if c.snapshotEvery > 0 && m.CommandIndex%c.snapshotEvery == 0 {
				rf.Snapshot(m.CommandIndex, encodeTestSnapshot(cmds))
			}
		}
	}
}

func (c *cluster) check(i, index int, cmd string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.committed[index]; ok && prev != cmd {
		if c.failure == nil {
			c.failure = fmt.Errorf("peer %d applied %q at index %d, another peer %q", i, cmd, index, prev)
		}
		return
	}
	c.committed[index] = cmd
	c.applied[i] = index
	c.maxIndex = max(c.maxIndex, index)
}

func (c *cluster) disconnect(i int) { c.net.Disconnect(i); c.conn[i] = false }
func (c *cluster) connect(i int)    { c.net.Connect(i); c.conn[i] = true }

func (c *cluster) peer(i int) *Raft {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peers[i]
}

// leaders returns, by term, the connected live peers that think they
// lead.
func (c *cluster) leaders(connected []bool) map[uint64][]int {
	m := map[uint64][]int{}
	for i := range c.n {
		if rf := c.peer(i); rf != nil && connected[i] {
			if term, ok := rf.State(); ok {
				m[term] = append(m[term], i)
			}
		}
	}
	return m
}

// checkOneLeader waits for exactly one leader among the connected peers
// and returns it.
func (c *cluster) checkOneLeader(connected []bool) int {
	c.t.Helper()
	for range 40 {
		time.Sleep(testElection/2 + time.Duration(rand.IntN(int(testElection/4))))
		m := c.leaders(connected)
		var last uint64
		for term, ls := range m {
			if len(ls) > 1 {
				c.t.Fatalf("term %d has %d leaders: %v", term, len(ls), ls)
			}
			last = max(last, term)
		}
		if len(m) > 0 {
			return m[last][0]
		}
	}
	c.t.Fatal("no leader elected")
	return -1
}

func (c *cluster) checkNoLeader(connected []bool) {
	c.t.Helper()
	if m := c.leaders(connected); len(m) > 0 {
		c.t.Fatalf("expected no leader among %v, got %v", connected, m)
	}
}

// checkTerms waits until all live peers agree on the term (a peer whose
// vote request lost a race may be one ahead for a moment) and returns it.
func (c *cluster) checkTerms() uint64 {
	c.t.Helper()
	var terms map[uint64]bool
	for range 20 {
		terms = map[uint64]bool{}
		var term uint64
		for i := range c.n {
			if rf := c.peer(i); rf != nil {
				term, _ = rf.State()
				terms[term] = true
			}
		}
		if len(terms) == 1 {
			return term
		}
		time.Sleep(testElection / 2)
	}
	c.t.Fatalf("peers disagree on the term: %v", terms)
	return 0
}

// nCommitted returns how many live peers applied index, and the command.
func (c *cluster) nCommitted(index int) (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failure != nil {
		c.t.Fatal(c.failure)
	}
	n := 0
	for i := range c.n {
		if c.peers[i] != nil && c.applied[i] >= index {
			n++
		}
	}
	return n, c.committed[index]
}

// one submits cmd to a connected leader and waits until at least expected peers
// applied it, retrying the submission if a leader loses its term.
func (c *cluster) one(cmd string, expected int, retry bool) int {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		index := -1
		for i := range c.n {
			if rf := c.peer(i); rf != nil && c.conn[i] {
				if idx, _, ok := rf.Start([]byte(cmd)); ok {
					index = idx
					break
				}
			}
		}
		if index < 0 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		until := time.Now().Add(2 * time.Second)
		for time.Now().Before(until) {
			n, got := c.nCommitted(index)
			if n >= expected && got == cmd {
				return index
			}
			if n > 0 && got != cmd {
				break // another command won the index
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !retry {
			c.t.Fatalf("%q not committed by %d peers", cmd, expected)
		}
	}
	c.t.Fatalf("%q not committed by %d peers within 10s", cmd, expected)
	return -1
}

// waitCommitted waits until n peers applied index.
func (c *cluster) waitCommitted(index, n int, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if got, _ := c.nCommitted(index); got >= n {
			return
		}
		if time.Now().After(deadline) {
			got, _ := c.nCommitted(index)
			c.t.Fatalf("index %d applied by %d peers, want %d", index, got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func all(n int) []bool {
	b := make([]bool, n)
	for i := range b {
		b[i] = true
	}
	return b
}

func cmd(i int) string { return "c" + strconv.Itoa(i) }

// schedulingGaps measures how late this process gets to run: it returns
// a function giving the longest delay seen so far beyond a 5 ms tick.
// Term stability can only be asserted when no gap approaches the election
// timeout: a process descheduled that long (a loaded two-core machine
// running -race) rightly sees an election.
func schedulingGaps(t *testing.T) func() time.Duration {
	var worst atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := time.Now()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				if gap := int64(now.Sub(last) - 5*time.Millisecond); gap > worst.Load() {
					worst.Store(gap)
				}
				last = now
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func() time.Duration { return time.Duration(worst.Load()) }
}

// checkTermStable fails if the term moved from want, unless the process
// was descheduled long enough to explain an election.
func (c *cluster) checkTermStable(want uint64, gaps func() time.Duration) {
	c.t.Helper()
	got := c.checkTerms()
	if got == want {
		return
	}
	if g := gaps(); g > testHeartbeat {
		c.t.Logf("term moved from %d to %d, but the process was descheduled for %v: not judged", want, got, g)
		return
	}
	c.t.Fatalf("term moved from %d to %d without failures", want, got)
}
