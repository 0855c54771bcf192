package raft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Config configures one peer.
type Config struct {
	ID        int // this peer, 0 <= ID < Peers
	Peers     int // cluster size
	Transport Transport
	Persister Persister
	// ElectionTimeout is the lower bound of the randomized election
	// timeout; each wait is drawn from [ElectionTimeout, 2*ElectionTimeout).
	ElectionTimeout time.Duration
	// HeartbeatInterval is how often a leader sends AppendEntries to an
	// idle follower; it must be well below ElectionTimeout.
	HeartbeatInterval time.Duration
	// RPCTimeout bounds one RPC; a lost message costs at most this.
	RPCTimeout time.Duration
	// MaxEntriesPerMessage bounds an AppendEntries batch.
	MaxEntriesPerMessage int
	// Seed seeds the timeout randomization (0: random).
	Seed   uint64
	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = 300 * time.Millisecond
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 50 * time.Millisecond
	}
	if c.RPCTimeout == 0 {
		c.RPCTimeout = 100 * time.Millisecond
	}
	if c.MaxEntriesPerMessage == 0 {
		c.MaxEntriesPerMessage = 256
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ApplyMsg is one item on the apply channel: either a committed command
// or a snapshot the service must install (received from the leader, or
// the persisted one at start). Items come in index order.
type ApplyMsg struct {
	CommandValid bool
	Command      []byte
	CommandIndex int
	CommandTerm  uint64

	SnapshotValid bool
	Snapshot      []byte
	SnapshotIndex int
	SnapshotTerm  uint64
}

type role int

const (
	follower role = iota
	candidate
	leader
)

func (r role) String() string {
	return [...]string{"follower", "candidate", "leader"}[r]
}

// ErrStopped is returned by a peer that was killed or whose persister
// failed.
var ErrStopped = errors.New("raft peer stopped")

// Raft is one peer.
type Raft struct {
	cfg    Config
	me     int
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	applyCh chan ApplyMsg
	// trigger[p] wakes peer p's replicator (buffered 1: a pending wake-up
	// absorbs further ones).
	trigger []chan struct{}

	mu        sync.Mutex
	applyCond *sync.Cond
	stopped   error // non-nil once killed or failed: no more persisting
	rng       *rand.Rand

	// Persistent (Figure 2). log[0] stands for the snapshot's last entry
	// (its Term is the snapshot's last term, its command nil), so the
	// entry with index i is log[i-snapIndex].
	term     uint64
	votedFor int
	log_     []Entry
	snapIdx  int
	snapshot []byte

	// Volatile.
	role            role
	commitIndex     int
	lastApplied     int
	snapshotPending bool // snapshot not yet delivered on applyCh
	deadline        time.Time
	nextIndex       []int
	matchIndex      []int
	// heardFrom[p] is when peer p last answered this leader in its term;
	// leaderSince when it took office.
	heardFrom   []time.Time
	leaderSince time.Time
	// leaderContact is when a current leader last reached this peer;
	// preVoteRound tells a pre-vote's replies from an older one's.
	leaderContact time.Time
	preVoteRound  int
}

// New starts a peer from what cfg.Persister holds. It runs until ctx ends
// or Kill is called; the apply channel is closed after that.
func New(ctx context.Context, cfg Config) (*Raft, error) {
	if cfg.Peers < 1 || cfg.ID < 0 || cfg.ID >= cfg.Peers {
		return nil, fmt.Errorf("start raft: peer %d of %d", cfg.ID, cfg.Peers)
	}
	if cfg.Transport == nil || cfg.Persister == nil {
		return nil, errors.New("start raft: missing transport or persister")
	}
	cfg.defaults()
	rf := &Raft{
		cfg:        cfg,
		me:         cfg.ID,
		log:        cfg.Logger.With("peer", cfg.ID),
		applyCh:    make(chan ApplyMsg),
		votedFor:   -1,
		log_:       []Entry{{}},
		nextIndex:  make([]int, cfg.Peers),
		matchIndex: make([]int, cfg.Peers),
		heardFrom:  make([]time.Time, cfg.Peers),
		rng:        rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.ID))),
	}
	rf.applyCond = sync.NewCond(&rf.mu)
	if err := rf.restore(); err != nil {
		return nil, err
	}
	rf.ctx, rf.cancel = context.WithCancel(ctx)
	rf.resetElectionTimer()
	for range cfg.Peers {
		rf.trigger = append(rf.trigger, make(chan struct{}, 1))
	}
	rf.wg.Go(rf.ticker)
	rf.wg.Go(rf.applier)
	for p := range cfg.Peers {
		if p != rf.me {
			rf.wg.Go(func() { rf.replicator(p) })
		}
	}
	// A cancelled parent context stops the peer as Kill does.
	rf.wg.Go(func() {
		<-rf.ctx.Done()
		rf.mu.Lock()
		if rf.stopped == nil {
			rf.stopped = ErrStopped
		}
		rf.applyCond.Broadcast()
		rf.mu.Unlock()
	})
	go func() {
		rf.wg.Wait()
		close(rf.applyCh)
	}()
	return rf, nil
}

func (rf *Raft) restore() error {
	state, snap, err := rf.cfg.Persister.Load()
	if err != nil {
		return fmt.Errorf("start raft peer %d: %w", rf.me, err)
	}
	if state == nil {
		return nil
	}
	s, err := decodePersistentState(state)
	if err != nil {
		return fmt.Errorf("start raft peer %d: %w", rf.me, err)
	}
	if s.VotedFor >= rf.cfg.Peers {
		return fmt.Errorf("start raft peer %d: persisted vote for peer %d of %d", rf.me, s.VotedFor, rf.cfg.Peers)
	}
	rf.term, rf.votedFor = s.Term, s.VotedFor
	rf.snapIdx = s.SnapshotIndex
	rf.log_ = append([]Entry{{Term: s.SnapshotTerm}}, s.Entries...)
	rf.snapshot = snap
	rf.commitIndex, rf.lastApplied = s.SnapshotIndex, s.SnapshotIndex
	rf.snapshotPending = s.SnapshotIndex > 0
	return nil
}

// Apply is the channel of committed commands and snapshots. The service
// must keep receiving until it is closed (after Kill).
func (rf *Raft) Apply() <-chan ApplyMsg { return rf.applyCh }

// Kill stops the peer and waits for all its goroutines. Nothing is
// persisted after Kill returns.
func (rf *Raft) Kill() {
	rf.mu.Lock()
	if rf.stopped == nil {
		rf.stopped = ErrStopped
	}
	rf.applyCond.Broadcast()
	rf.mu.Unlock()
	rf.cancel()
	rf.wg.Wait()
}

// Err returns why the peer stopped, nil while it runs.
func (rf *Raft) Err() error {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	return rf.stopped
}

// State returns the current term and whether this peer believes it leads.
func (rf *Raft) State() (term uint64, isLeader bool) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	return rf.term, rf.role == leader && rf.stopped == nil
}

// PersistedSize is the size of the persisted Raft state (without the
// snapshot), which services compare with their snapshot threshold.
func (rf *Raft) PersistedSize() int { return rf.cfg.Persister.Size() }

// Start proposes command. If this peer is the leader it appends the
// command to its log (durably) and returns the index it will have if it is
// ever committed; there is no guarantee that it will be.
func (rf *Raft) Start(command []byte) (index int, term uint64, isLeader bool) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.role != leader || rf.stopped != nil {
		return 0, rf.term, false
	}
	rf.log_ = append(rf.log_, Entry{Term: rf.term, Command: command})
	if !rf.persist() {
		return 0, rf.term, false
	}
	index = rf.lastIndex()
	rf.matchIndex[rf.me] = index
	rf.advanceCommit()
	rf.triggerAll()
	return index, rf.term, true
}

// Snapshot tells Raft that the service's state through index is captured
// in snapshot, so the log up to index can be discarded (Section 7).
func (rf *Raft) Snapshot(index int, snapshot []byte) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.stopped != nil || index <= rf.snapIdx || index > rf.commitIndex {
		return
	}
	rf.compact(index, rf.termAt(index))
	rf.snapshot = snapshot
	rf.persist()
}

// compact drops the log through index, keeping index as the sentinel.
func (rf *Raft) compact(index int, term uint64) {
	var rest []Entry
	if index < rf.lastIndex() {
		rest = rf.log_[index-rf.snapIdx+1:]
	}
	rf.log_ = append([]Entry{{Term: term}}, rest...)
	rf.snapIdx = index
}

func (rf *Raft) lastIndex() int { return rf.snapIdx + len(rf.log_) - 1 }

func (rf *Raft) lastTerm() uint64 { return rf.log_[len(rf.log_)-1].Term }

// termAt is the term of the entry at index, which must be in
// [snapIdx, lastIndex].
func (rf *Raft) termAt(index int) uint64 { return rf.log_[index-rf.snapIdx].Term }

// persist saves the persistent state; it must be called, with mu held,
// before any reply or action that depends on the state. On failure the
// peer stops: it can no longer keep its promises.
func (rf *Raft) persist() bool {
	if rf.stopped != nil {
		return false
	}
	s := persistentState{
		Term:          rf.term,
		VotedFor:      rf.votedFor,
		SnapshotIndex: rf.snapIdx,
		SnapshotTerm:  rf.log_[0].Term,
		Entries:       rf.log_[1:],
	}
	if err := rf.cfg.Persister.Save(s.encode(), rf.snapshot); err != nil {
		rf.log.Error("persist failed; stopping", "err", err)
		rf.stopped = fmt.Errorf("%w: %w", ErrStopped, err)
		rf.role = follower
		rf.applyCond.Broadcast()
		go rf.cancel()
		return false
	}
	return true
}

func (rf *Raft) resetElectionTimer() {
	et := rf.cfg.ElectionTimeout
	rf.deadline = time.Now().Add(et + time.Duration(rf.rng.Int64N(int64(et))))
}

// becomeFollower adopts a newer term (Figure 2, "All Servers").
func (rf *Raft) becomeFollower(term uint64) {
	if term > rf.term {
		rf.term = term
		rf.votedFor = -1
	}
	rf.role = follower
}

func (rf *Raft) triggerAll() {
	for p := range rf.trigger {
		if p != rf.me {
			rf.wake(p)
		}
	}
}

// ticker starts elections when the election timer expires.
func (rf *Raft) ticker() {
	// The tick only needs to be fine against the election timeout (10 ms
	// for the default 300 ms). A fixed 10 ms tick was most of the CPU of
	// replicas in guests in the nested host, where every wakeup costs
	// several emulated VM exits, and starved their RPCs.
	t := time.NewTicker(max(rf.cfg.ElectionTimeout/30, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-rf.ctx.Done():
			return
		case <-t.C:
		}
		rf.mu.Lock()
		if rf.stopped == nil && rf.role != leader && time.Now().After(rf.deadline) {
			rf.startPreVote()
		}
		if rf.stopped == nil && rf.role == leader && !rf.hasQuorum() {
			rf.log.Debug("no quorum; stepping down", "term", rf.term)
			rf.role = follower
			rf.resetElectionTimer()
		}
		rf.mu.Unlock()
	}
}

// hasQuorum reports whether a majority answered this leader within the
// last two election timeouts (two: a slow but connected majority must not
// make leaders step down). A leader cut off from its majority steps down
// (without changing its term) instead of taking proposals it cannot
// commit, so clients move on to the majority's leader sooner: the
// CheckQuorum optimization, not part of Figure 2, and harmless to safety.
func (rf *Raft) hasQuorum() bool {
	since := time.Now().Add(-2 * rf.cfg.ElectionTimeout)
	if rf.leaderSince.After(since) {
		return true
	}
	n := 1
	for p, t := range rf.heardFrom {
		if p != rf.me && t.After(since) {
			n++
		}
	}
	return n*2 > rf.cfg.Peers
}

// startPreVote asks the peers whether they would vote for this peer in
// the next term before it disrupts anyone by incrementing its term (the
// PreVote step of Ongaro's thesis, Section 9.6): a peer that heard from a
// leader within the election timeout refuses, so a follower that was only
// slow or briefly cut off rejoins without forcing an election.
func (rf *Raft) startPreVote() {
	rf.resetElectionTimer()
	rf.preVoteRound++
	round := rf.preVoteRound
	args := &RequestVoteArgs{Term: rf.term + 1, Candidate: rf.me, LastLogIndex: rf.lastIndex(), LastLogTerm: rf.lastTerm(), PreVote: true}
	rf.canvass(args, func() bool {
		return rf.role != leader && rf.term+1 == args.Term && rf.preVoteRound == round
	}, rf.startElection)
}

func (rf *Raft) startElection() {
	rf.term++
	rf.role = candidate
	rf.votedFor = rf.me
	rf.resetElectionTimer()
	if !rf.persist() {
		return
	}
	rf.log.Debug("election", "term", rf.term)
	args := &RequestVoteArgs{Term: rf.term, Candidate: rf.me, LastLogIndex: rf.lastIndex(), LastLogTerm: rf.lastTerm()}
	rf.canvass(args, func() bool { return rf.role == candidate && rf.term == args.Term }, rf.becomeLeader)
}

// canvass sends args to every other peer and calls won, with mu held,
// once a majority (this peer included) granted it while valid holds.
func (rf *Raft) canvass(args *RequestVoteArgs, valid func() bool, won func()) {
	votes := 1
	if votes*2 > rf.cfg.Peers {
		won()
		return
	}
	for p := range rf.cfg.Peers {
		if p == rf.me {
			continue
		}
		rf.wg.Go(func() {
			reply := new(RequestVoteReply)
			if err := rf.call(p, args, reply); err != nil {
				// Rare on a healthy network, and the first thing to look
				// at when no election succeeds.
				rf.log.Debug("vote request failed", "to", p, "term", args.Term, "prevote", args.PreVote, "err", err)
				return
			}
			rf.mu.Lock()
			defer rf.mu.Unlock()
			if rf.stopped != nil {
				return
			}
			if reply.Term > rf.term {
				rf.becomeFollower(reply.Term)
				rf.persist()
				return
			}
			if !reply.Granted || !valid() {
				return
			}
			// won changes the state valid checks, so it runs once.
			if votes++; votes*2 > rf.cfg.Peers {
				won()
			}
		})
	}
}

func (rf *Raft) becomeLeader() {
	rf.role = leader
	rf.leaderSince = time.Now()
	rf.log.Debug("leader", "term", rf.term, "last", rf.lastIndex())
	for p := range rf.nextIndex {
		rf.nextIndex[p] = rf.lastIndex() + 1
		rf.matchIndex[p] = 0
	}
	rf.matchIndex[rf.me] = rf.lastIndex()
	rf.advanceCommit()
	rf.triggerAll()
}

// call sends one RPC with the RPC timeout.
func (rf *Raft) call(peer int, args, reply message) error {
	ctx, cancel := context.WithTimeout(rf.ctx, rf.cfg.RPCTimeout)
	defer cancel()
	b, err := rf.cfg.Transport.Call(ctx, peer, encodeMessage(args))
	if err != nil {
		return err
	}
	return decodeAs(b, reply)
}

// replicator sends AppendEntries or InstallSnapshot to one peer while
// this peer leads: at once when triggered, else every heartbeat interval.
// One RPC to a peer is outstanding at a time, so replies never arrive
// out of order.
func (rf *Raft) replicator(peer int) {
	t := time.NewTimer(rf.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-rf.ctx.Done():
			return
		case <-rf.trigger[peer]:
		case <-t.C:
		}
		t.Reset(rf.cfg.HeartbeatInterval)
		rf.mu.Lock()
		if rf.role != leader || rf.stopped != nil {
			rf.mu.Unlock()
			continue
		}
		if rf.nextIndex[peer] <= rf.snapIdx {
			args := &InstallSnapshotArgs{Term: rf.term, Leader: rf.me, LastIncludedIndex: rf.snapIdx, LastIncludedTerm: rf.log_[0].Term, Data: rf.snapshot}
			rf.mu.Unlock()
			reply := new(InstallSnapshotReply)
			if rf.call(peer, args, reply) == nil {
				rf.handleInstallSnapshotReply(peer, args, reply)
			}
			continue
		}
		args := rf.appendEntriesArgs(peer)
		rf.mu.Unlock()
		reply := new(AppendEntriesReply)
		if rf.call(peer, args, reply) == nil {
			rf.handleAppendEntriesReply(peer, args, reply)
		}
	}
}

func (rf *Raft) appendEntriesArgs(peer int) *AppendEntriesArgs {
	next := rf.nextIndex[peer]
	n := min(rf.lastIndex()+1-next, rf.cfg.MaxEntriesPerMessage)
	// A copy: the log's backing array is overwritten when a later leader
	// truncates it while this message is being encoded.
	entries := make([]Entry, n)
	copy(entries, rf.log_[next-rf.snapIdx:])
	return &AppendEntriesArgs{
		Term:         rf.term,
		Leader:       rf.me,
		PrevLogIndex: next - 1,
		PrevLogTerm:  rf.termAt(next - 1),
		Entries:      entries,
		LeaderCommit: rf.commitIndex,
	}
}

func (rf *Raft) handleAppendEntriesReply(peer int, args *AppendEntriesArgs, reply *AppendEntriesReply) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if !rf.leadingAfterReply(args.Term, reply.Term) {
		return
	}
	rf.heardFrom[peer] = time.Now()
	if reply.Success {
		match := args.PrevLogIndex + len(args.Entries)
		rf.matchIndex[peer] = max(rf.matchIndex[peer], match)
		rf.nextIndex[peer] = max(rf.nextIndex[peer], match+1)
		rf.advanceCommit()
	} else {
		rf.nextIndex[peer] = rf.backtrack(peer, reply)
	}
	if rf.nextIndex[peer] <= rf.lastIndex() {
		rf.wake(peer)
	}
}

// leadingAfterReply handles the term of a reply to an RPC sent in term
// sent (stepping down if it is newer) and reports whether this peer still
// leads in that term, so the reply may be acted on.
func (rf *Raft) leadingAfterReply(sent, replyTerm uint64) bool {
	if rf.stopped != nil {
		return false
	}
	if replyTerm > rf.term {
		rf.becomeFollower(replyTerm)
		rf.persist()
		return false
	}
	return rf.role == leader && rf.term == sent
}

func (rf *Raft) wake(peer int) {
	select {
	case rf.trigger[peer] <- struct{}{}:
	default:
	}
}

// backtrack picks the next index to try after a rejected AppendEntries:
// the entry after the leader's last entry of the follower's conflicting
// term if the leader has that term, else the first index of that term on
// the follower, else (the follower's log is too short) its log length.
func (rf *Raft) backtrack(peer int, reply *AppendEntriesReply) int {
	next := reply.LogLength
	if reply.ConflictTerm != 0 {
		next = reply.ConflictIndex
		for i := rf.lastIndex(); i >= rf.snapIdx; i-- {
			if t := rf.termAt(i); t == reply.ConflictTerm {
				next = i + 1
				break
			} else if t < reply.ConflictTerm {
				break
			}
		}
	}
	// Never at or below what the follower is known to hold, never past
	// the end.
	return min(max(next, rf.matchIndex[peer]+1), rf.lastIndex()+1)
}

func (rf *Raft) handleInstallSnapshotReply(peer int, args *InstallSnapshotArgs, reply *InstallSnapshotReply) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if !rf.leadingAfterReply(args.Term, reply.Term) {
		return
	}
	rf.heardFrom[peer] = time.Now()
	rf.matchIndex[peer] = max(rf.matchIndex[peer], args.LastIncludedIndex)
	rf.nextIndex[peer] = max(rf.nextIndex[peer], args.LastIncludedIndex+1)
	rf.advanceCommit()
	rf.wake(peer)
}

// advanceCommit applies the commit rule: the largest N replicated on a
// majority whose entry is of the current term (Figure 2; Section 5.4.2:
// older entries are committed only indirectly, by a current-term entry).
func (rf *Raft) advanceCommit() {
	for n := rf.lastIndex(); n > rf.commitIndex && n > rf.snapIdx; n-- {
		if rf.termAt(n) != rf.term {
			break // earlier entries have older terms too
		}
		count := 0
		for _, m := range rf.matchIndex {
			if m >= n {
				count++
			}
		}
		if count*2 > rf.cfg.Peers {
			rf.commitIndex = n
			rf.applyCond.Broadcast()
			// Followers learn the new commit index now rather than at
			// the next heartbeat.
			rf.triggerAll()
			return
		}
	}
}

// applier delivers committed entries and installed snapshots on applyCh,
// in index order, without holding mu while the service receives.
func (rf *Raft) applier() {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	for {
		for rf.stopped == nil && !rf.snapshotPending && rf.lastApplied >= rf.commitIndex {
			rf.applyCond.Wait()
		}
		if rf.stopped != nil {
			return
		}
		var msgs []ApplyMsg
		if rf.snapshotPending {
			rf.snapshotPending = false
			msgs = []ApplyMsg{{SnapshotValid: true, Snapshot: rf.snapshot, SnapshotIndex: rf.snapIdx, SnapshotTerm: rf.log_[0].Term}}
		} else {
			for i := rf.lastApplied + 1; i <= rf.commitIndex; i++ {
				e := rf.log_[i-rf.snapIdx]
				msgs = append(msgs, ApplyMsg{CommandValid: true, Command: e.Command, CommandIndex: i, CommandTerm: e.Term})
			}
		}
		rf.mu.Unlock()
		for _, m := range msgs {
			select {
			case rf.applyCh <- m:
			case <-rf.ctx.Done():
				rf.mu.Lock()
				return
			}
		}
		rf.mu.Lock()
		last := msgs[len(msgs)-1]
		rf.lastApplied = max(rf.lastApplied, last.CommandIndex, last.SnapshotIndex)
	}
}
