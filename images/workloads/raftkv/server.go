package raftkv

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raft"
)

// Config configures a Server.
type Config struct {
	Raft raft.Config
	// MaxRaftState: when the persisted Raft state reaches this many
	// bytes, the server snapshots and Raft trims its log (0: never).
	MaxRaftState int
	// OpTimeout bounds how long a request waits for its op to commit
	// before answering StatusTimeout (the clerk then retries).
	OpTimeout time.Duration
}

// Server is one replica: a Raft peer and the state machine fed by its
// apply channel. Every op, Get included, goes through the log, so a reply
// reflects a state at least as new as every op completed before the
// request (linearizable reads without leases).
type Server struct {
	rf        *raft.Raft
	cfg       Config
	log       *slog.Logger
	persisted func() int
	applied   chan struct{} // closed when the apply loop ends

	mu          sync.Mutex
	st          *state
	lastApplied int
	waiters     map[int]chan appliedOp // by log index
}

// appliedOp is what the apply loop tells a waiting request: which op
// landed at its index, and Get's value.
type appliedOp struct {
	clientID, seq uint64
	value         string
}

// StartServer starts the Raft peer described by cfg.Raft and the state
// machine on top. It runs until ctx ends or Kill.
func StartServer(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = time.Second
	}
	rf, err := raft.New(ctx, cfg.Raft)
	if err != nil {
		return nil, fmt.Errorf("start kv server: %w", err)
	}
	lg := cfg.Raft.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		rf:        rf,
		cfg:       cfg,
		log:       lg.With("kv", cfg.Raft.ID),
		persisted: rf.PersistedSize,
		applied:   make(chan struct{}),
		st:        newState(),
		waiters:   map[int]chan appliedOp{},
	}
	go func() {
		defer close(s.applied)
		s.applyLoop()
	}()
	return s, nil
}

// Raft returns the server's Raft peer (for its RPC handler and tests).
func (s *Server) Raft() *raft.Raft { return s.rf }

// Kill stops the peer and the apply loop.
func (s *Server) Kill() {
	s.rf.Kill()
	<-s.applied
}

func (s *Server) applyLoop() {
	for m := range s.rf.Apply() {
		switch {
		case m.SnapshotValid:
			s.installSnapshot(m)
		case m.CommandValid:
			s.applyCommand(m)
		}
	}
}

func (s *Server) installSnapshot(m raft.ApplyMsg) {
	st, err := decodeState(m.Snapshot)
	if err != nil {
		// Raft checked the bytes on disk; a snapshot we cannot read is a
		// bug, and guessing a state would break linearizability.
		panic(fmt.Sprintf("kv server %d: snapshot at %d: %v", s.cfg.Raft.ID, m.SnapshotIndex, err))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.SnapshotIndex <= s.lastApplied {
		return
	}
	s.st, s.lastApplied = st, m.SnapshotIndex
	// Requests waiting at covered indices will never hear of them.
	for idx, ch := range s.waiters {
		if idx <= m.SnapshotIndex {
			ch <- appliedOp{}
			delete(s.waiters, idx)
		}
	}
}

func (s *Server) applyCommand(m raft.ApplyMsg) {
	op, err := decodeOp(m.Command)
	if err != nil {
		panic(fmt.Sprintf("kv server %d: log entry %d: %v", s.cfg.Raft.ID, m.CommandIndex, err))
	}
	s.mu.Lock()
	if m.CommandIndex <= s.lastApplied {
		s.mu.Unlock()
		return
	}
	value := s.st.apply(op)
	s.lastApplied = m.CommandIndex
	if ch, ok := s.waiters[m.CommandIndex]; ok {
		ch <- appliedOp{clientID: op.ClientID, seq: op.Seq, value: value}
		delete(s.waiters, m.CommandIndex)
	}
	var snap []byte
	if s.cfg.MaxRaftState > 0 && s.persisted() >= s.cfg.MaxRaftState {
		snap = s.st.encode()
	}
	s.mu.Unlock()
	if snap != nil {
		s.rf.Snapshot(m.CommandIndex, snap)
	}
}

// Do executes op through the log and returns Get's value.
func (s *Server) Do(ctx context.Context, op Op) (Status, string) {
	index, term, ok := s.rf.Start(op.encode())
	if !ok {
		return StatusWrongLeader, ""
	}
	ch := make(chan appliedOp, 1)
	s.mu.Lock()
	if old, ok := s.waiters[index]; ok {
		old <- appliedOp{} // an op from an earlier term lost this index
	}
	s.waiters[index] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.waiters[index] == ch {
			delete(s.waiters, index)
		}
		s.mu.Unlock()
	}()
	timeout := time.NewTimer(s.cfg.OpTimeout)
	defer timeout.Stop()
	// A leader that lost its term will not commit the op at this index;
	// noticing that early saves the clerk the whole timeout.
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case a := <-ch:
			if a.clientID != op.ClientID || a.seq != op.Seq {
				return StatusWrongLeader, ""
			}
			return StatusOK, a.value
		case <-poll.C:
			if t, _ := s.rf.State(); t != term {
				return StatusWrongLeader, ""
			}
		case <-timeout.C:
			return StatusTimeout, ""
		case <-ctx.Done():
			return StatusTimeout, ""
		}
	}
}

// HandleRPC answers an encoded Op (the clerk's protocol) and, on a port
// shared with the peers, Raft's own messages.
func (s *Server) HandleRPC(ctx context.Context, req []byte) ([]byte, error) {
	if raft.MessageKind(req) != 0 {
		return s.rf.HandleRPC(ctx, req)
	}
	op, err := decodeOp(req)
	if err != nil {
		return nil, fmt.Errorf("kv server %d: %w", s.cfg.Raft.ID, err)
	}
	st, v := s.Do(ctx, op)
	return reply{Status: st, Value: v}.encode(), nil
}

// snapshotSize is the size of the state machine's encoding (for tests).
func (s *Server) snapshotSize() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.st.encode())
}
