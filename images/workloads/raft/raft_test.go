package raft

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestInitialElection(t *testing.T) {
	c := newCluster(t, 3, 0)
	c.checkOneLeader(c.conn)
	gaps := schedulingGaps(t)
	term1 := c.checkTerms()
	if term1 < 1 {
		t.Fatalf("term %d after an election", term1)
	}
	// With no failures the leader keeps its term.
	time.Sleep(4 * testElection)
	c.checkTermStable(term1, gaps)
	c.checkOneLeader(c.conn)
}

func TestReElection(t *testing.T) {
	c := newCluster(t, 3, 0)
	l1 := c.checkOneLeader(c.conn)
	c.disconnect(l1)
	l2 := c.checkOneLeader(c.conn)
	if l2 == l1 {
		t.Fatalf("disconnected leader %d still the only leader", l1)
	}
	// The old leader rejoins as a follower.
	c.connect(l1)
	l3 := c.checkOneLeader(c.conn)
	// No quorum, no leader.
	c.disconnect(l3)
	c.disconnect((l3 + 1) % 3)
	time.Sleep(4 * testElection)
	c.checkNoLeader(c.conn)
	c.connect((l3 + 1) % 3)
	c.checkOneLeader(c.conn)
	c.connect(l3)
	c.checkOneLeader(c.conn)
}

// TestRejoinWithoutElection: a follower cut off for several election
// timeouts comes back without disturbing the leader (PreVote: it never
// incremented its term while it could not win), and a leader cut off from
// its majority stops acting as leader (CheckQuorum).
func TestRejoinWithoutElection(t *testing.T) {
	c := newCluster(t, 3, 0)
	l := c.checkOneLeader(c.conn)
	gaps := schedulingGaps(t)
	term := c.checkTerms()
	f := (l + 1) % 3
	c.disconnect(f)
	time.Sleep(5 * testElection)
	// Whatever the scheduling, a peer that cannot reach anyone never
	// increments its term.
	if got, _ := c.peer(f).State(); got != term {
		t.Fatalf("cut-off follower moved from term %d to %d", term, got)
	}
	c.connect(f)
	c.one("after rejoin", 3, true)
	c.checkTermStable(term, gaps)

	c.disconnect(l)
	time.Sleep(4 * testElection)
	if _, isLeader := c.peer(l).State(); isLeader {
		t.Fatal("a leader without its majority for 4 election timeouts still leads")
	}
	c.connect(l)
	c.one("after", 3, true)
}

func TestAgreeAndNoQuorumNoCommit(t *testing.T) {
	c := newCluster(t, 5, 0)
	last := 0
	for i := range 5 {
		idx := c.one(cmd(i), 5, true)
		if idx <= last {
			t.Fatalf("command %d at index %d after %d", i, idx, last)
		}
		last = idx
	}
	l := c.checkOneLeader(c.conn)
	for k := 1; k <= 3; k++ {
		c.disconnect((l + k) % 5)
	}
	idx, _, ok := c.peer(l).Start([]byte("lonely"))
	if !ok || idx != last+1 {
		t.Fatalf("Start on leader: index %d ok %v, want index %d", idx, ok, last+1)
	}
	time.Sleep(4 * testElection)
	if n, _ := c.nCommitted(idx); n > 0 {
		t.Fatalf("%d peers committed index %d without a quorum", n, idx)
	}
	for k := 1; k <= 3; k++ {
		c.connect((l + k) % 5)
	}
	// The majority may elect a new leader whose log lacks "lonely"; either
	// way the cluster agrees again.
	c.one("after", 5, true)
}

func TestFailedFollowerAndRejoin(t *testing.T) {
	c := newCluster(t, 3, 0)
	c.one("a", 3, false)
	l := c.checkOneLeader(c.conn)
	c.disconnect((l + 1) % 3)
	c.one("b", 2, false)
	c.one("c", 2, false)
	c.connect((l + 1) % 3)
	c.one("d", 3, true)
}

func TestPersistCrashRestart(t *testing.T) {
	c := newCluster(t, 3, 0)
	c.one("x1", 3, true)
	termBefore := c.checkTerms()
	for i := range 3 {
		c.crash(i)
	}
	for i := range 3 {
		c.start(i)
	}
	c.checkOneLeader(c.conn)
	if term := c.checkTerms(); term <= termBefore {
		t.Fatalf("term %d after restart, was %d: the term was not persisted", term, termBefore)
	}
	// All restarted peers replay x1 from their persisted logs.
	c.one("x2", 3, true)
	if _, got := c.nCommitted(1); got != "x1" {
		t.Fatalf("index 1 is %q after restart", got)
	}
	l := c.checkOneLeader(c.conn)
	c.crash(l)
	c.one("x3", 2, true)
	c.start(l)
	c.one("x4", 3, true)
	// A follower crashing mid-stream and restarting catches up.
	f := (c.checkOneLeader(c.conn) + 1) % 3
	c.crash(f)
	for i := range 10 {
		c.one(cmd(i), 2, true)
	}
	c.start(f)
	c.one("x5", 3, true)
}

// TestFigure8Unreliable: leaders crash right after appending entries that
// only some followers received, under message loss and long reordering;
// the survivors must never commit divergent entries (checked on every
// apply by the cluster).
func TestFigure8Unreliable(t *testing.T) {
	c := newCluster(t, 5, 0)
	c.net.SetUnreliable(true)
	c.one("start", 1, true)
	iterations := 200
	if soak() {
		iterations = 1000
	}
	c.net.SetLongReordering(true)
	up, accepted := 5, 0
	terms := map[uint64]bool{} // terms in which a leader took a proposal
	for iter := range iterations {
		if iter == iterations/2 {
			c.net.SetLongReordering(false)
		}
		leader := -1
		for i := range 5 {
			if rf := c.peer(i); rf != nil && c.conn[i] {
				if _, term, ok := rf.Start([]byte(cmd(1000 + iter))); ok {
					leader = i
					accepted++
					terms[term] = true
				}
			}
		}
		if rand.IntN(1000) < 100 {
			time.Sleep(time.Duration(rand.IntN(int(testElection/time.Millisecond))) * time.Millisecond)
		} else {
			time.Sleep(time.Duration(rand.IntN(13)) * time.Millisecond)
		}
		if leader >= 0 && rand.IntN(2) == 0 {
			c.disconnect(leader)
			up--
		}
		if up < 3 {
			s := rand.IntN(5)
			if !c.conn[s] {
				c.connect(s)
				up++
			}
		}
	}
	c.net.SetLongReordering(false)
	for i := range 5 {
		if !c.conn[i] {
			c.connect(i)
		}
	}
	c.one("end", 5, true)
	c.mu.Lock()
	committed := len(c.committed)
	c.mu.Unlock()
	// Not a performance bound: the scenario needs leaders of several
	// terms to take proposals and then lose their followers.
	if len(terms) < 3 {
		t.Fatalf("leaders of only %d terms accepted proposals (%d in %d iterations)", len(terms), accepted, iterations)
	}
	t.Logf("%d iterations, %d proposals accepted in %d terms, %d entries committed", iterations, accepted, len(terms), committed)
}

// TestFigure8Crash is the same with crashes and restarts from persisted
// state instead of disconnections, on a reliable network.
func TestFigure8Crash(t *testing.T) {
	c := newCluster(t, 5, 0)
	c.one("start", 1, true)
	iterations := 30
	if soak() {
		iterations = 300
	}
	up := 5
	for iter := range iterations {
		leader := -1
		for i := range 5 {
			if rf := c.peer(i); rf != nil {
				if _, _, ok := rf.Start([]byte(cmd(iter))); ok {
					leader = i
				}
			}
		}
		if rand.IntN(1000) < 100 {
			time.Sleep(time.Duration(rand.IntN(int(testElection/time.Millisecond))) * time.Millisecond)
		} else {
			time.Sleep(time.Duration(rand.IntN(13)) * time.Millisecond)
		}
		if leader >= 0 {
			c.crash(leader)
			up--
		}
		if up < 3 {
			s := rand.IntN(5)
			if c.peer(s) == nil {
				c.start(s)
				up++
			}
		}
	}
	for i := range 5 {
		if c.peer(i) == nil {
			c.start(i)
		}
	}
	c.one("end", 5, true)
}

// TestBacktrackingLongDivergentLog builds followers whose logs diverge
// from the leader's by hundreds of entries (Figure 7's (d)-(f) at scale)
// and counts the AppendEntries that repair them: one rejection per
// conflicting term, not per entry.
func TestBacktrackingLongDivergentLog(t *testing.T) {
	const n = 300
	c := newCluster(t, 5, 0)
	c.one("base", 5, true)
	l1 := c.checkOneLeader(c.conn)
	// l1 and one follower are cut off with n entries that never commit.
	f1 := (l1 + 1) % 5
	for _, p := range []int{2, 3, 4} {
		c.disconnect((l1 + p) % 5)
	}
	for i := range n {
		c.peer(l1).Start([]byte(cmd(10000 + i)))
	}
	time.Sleep(testElection)
	c.disconnect(l1)
	c.disconnect(f1)
	// The other three commit n entries of their own in a later term.
	for _, p := range []int{2, 3, 4} {
		c.connect((l1 + p) % 5)
	}
	for i := range n {
		if i%50 == 49 {
			c.one(cmd(20000+i), 3, true)
		} else if l := c.leaderAmong(c.conn); l >= 0 {
			c.peer(l).Start([]byte(cmd(20000 + i)))
		}
	}
	l2 := c.checkOneLeader(c.conn)
	// One of them falls behind, cut off with n more uncommitted entries.
	other := (l1 + 2) % 5
	if other == l2 {
		other = (l1 + 3) % 5
	}
	c.disconnect(other)
	for i := range n {
		c.peer(l2).Start([]byte(cmd(30000 + i)))
	}
	time.Sleep(testElection)
	// Everyone else comes back; l1 and f1 hold n entries of an old term
	// that must all be replaced.
	c.disconnect(l2)
	before, rejectedBefore := c.net.Count(KindAppendEntries), c.rejections.Load()
	for _, p := range []int{l1, f1, other} {
		c.connect(p)
	}
	idx := c.one("converged", 3, true)
	c.connect(l2)
	c.one("all", 5, true)
	c.waitCommitted(idx, 5, 5*time.Second)
	sent := c.net.Count(KindAppendEntries) - before
	rejected := c.rejections.Load() - rejectedBefore
	// Without acceleration l1 and f1 alone need n rejections each (one
	// per entry); with it, about one per conflicting term per follower.
	if rejected >= n/10 {
		t.Fatalf("%d rejected AppendEntries to repair logs diverging by %d entries", rejected, n)
	}
	t.Logf("%d rejected of %d AppendEntries (heartbeats included) to repair logs diverging by %d entries", rejected, sent, n)
}

// leaderAmong returns a connected leader, -1 if none.
func (c *cluster) leaderAmong(connected []bool) int {
	var best uint64
	l := -1
	for term, ls := range c.leaders(connected) {
		if term >= best {
			best, l = term, ls[0]
		}
	}
	return l
}

func TestSnapshotInstallToLaggingPeer(t *testing.T) {
	c := newCluster(t, 3, 10)
	c.one("a", 3, true)
	l := c.checkOneLeader(c.conn)
	lag := (l + 1) % 3
	c.disconnect(lag)
	for i := range 60 {
		c.one(cmd(i), 2, true)
	}
	// The leader compacted its log past what the lagging peer has.
	if s := c.persisters[l].SnapshotSize(); s == 0 {
		t.Fatal("leader took no snapshot")
	}
	before := c.net.Count(KindInstallSnapshot)
	c.connect(lag)
	idx := c.one("b", 3, true)
	if got := c.net.Count(KindInstallSnapshot) - before; got == 0 {
		t.Fatal("lagging peer caught up without InstallSnapshot")
	}
	c.waitCommitted(idx, 3, 5*time.Second)
	// Every peer restarts from its snapshot plus log.
	for i := range 3 {
		c.crash(i)
	}
	for i := range 3 {
		c.start(i)
	}
	idx = c.one("c", 3, true)
	if idx < 63 {
		t.Fatalf("index %d after restart", idx)
	}
	// The persisted log stays short: snapshots trim it.
	for i := range 3 {
		if size := c.persisters[i].Size(); size > 2000 {
			t.Errorf("peer %d persists %d bytes of log after snapshots", i, size)
		}
	}
}

func TestSnapshotUnderCrashesAndPartitions(t *testing.T) {
	c := newCluster(t, 3, 7)
	c.net.SetUnreliable(true)
	rounds := 8
	if soak() {
		rounds = 40
	}
	next := 0
	for r := range rounds {
		victim := rand.IntN(3)
		if r%2 == 0 {
			c.crash(victim)
		} else {
			c.disconnect(victim)
		}
		// A batch at once, then wait for its last entry.
		if l := c.leaderAmong(c.conn); l >= 0 {
			for range 11 {
				c.peer(l).Start([]byte(cmd(next)))
				next++
			}
		}
		c.one(cmd(next), 2, true)
		next++
		if r%2 == 0 {
			c.start(victim)
		} else {
			c.connect(victim)
		}
		c.one(cmd(next), 3, true)
		next++
	}
	c.mu.Lock()
	committed := len(c.committed)
	c.mu.Unlock()
	if committed < rounds*2 {
		t.Fatalf("only %d entries committed in %d rounds", committed, rounds)
	}
	if c.net.Count(KindInstallSnapshot) == 0 {
		t.Log("no InstallSnapshot in this run")
	}
}

// TestUnreliableChurn: clients keep proposing while peers crash, restart,
// disconnect and reconnect on a lossy network; every apply is checked for
// agreement, and the healed cluster must commit again.
func TestUnreliableChurn(t *testing.T) {
	c := newCluster(t, 5, 0)
	c.net.SetUnreliable(true)
	duration := 4 * time.Second
	if soak() {
		duration = 60 * time.Second
	}
	var stop atomic.Bool
	var proposed atomic.Int64
	var wg sync.WaitGroup
	for cl := range 3 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				for p := range 5 {
					if rf := c.peer(p); rf != nil {
						if _, _, ok := rf.Start([]byte(cmd(cl*1000000 + i))); ok {
							proposed.Add(1)
						}
					}
				}
				time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
			}
		})
	}
	end := time.Now().Add(duration)
	events := 0
	for time.Now().Before(end) {
		// Fail a random peer (crash or disconnect) while at most two are
		// out, else bring one back: the churn never stops, and a majority
		// is up more often than not.
		var out []int
		for p := range 5 {
			if c.peer(p) == nil || !c.conn[p] {
				out = append(out, p)
			}
		}
		if len(out) < 2 || (len(out) == 2 && rand.IntN(3) == 0) {
			if p := rand.IntN(5); rand.IntN(2) == 0 {
				c.crash(p)
			} else {
				c.disconnect(p)
			}
		} else {
			p := out[rand.IntN(len(out))]
			if c.peer(p) == nil {
				c.start(p)
			}
			c.connect(p)
		}
		events++
		time.Sleep(time.Duration(rand.IntN(int(3*testElection/time.Millisecond))) * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	c.net.SetUnreliable(false)
	for p := range 5 {
		if c.peer(p) == nil {
			c.start(p)
		}
		c.connect(p)
	}
	c.one("healed", 5, true)
	c.mu.Lock()
	committed := len(c.committed)
	c.mu.Unlock()
	if events < 5 || proposed.Load() < 20 || committed < 20 {
		t.Fatalf("%d failures and repairs, %d proposed, %d committed: the churn did too little", events, proposed.Load(), committed)
	}
	t.Logf("%d failures and repairs, %d proposed, %d committed", events, proposed.Load(), committed)
}

func TestKillLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		c := newCluster(t, 3, 0)
		c.net.SetUnreliable(true)
		c.one("x", 3, true)
		for i := range 3 {
			c.crash(i)
		}
		c.net.Close()
	}()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Kill:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
