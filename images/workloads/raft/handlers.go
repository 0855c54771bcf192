package raft

import (
	"context"
	"fmt"
	"time"
)

// HandleRPC answers an encoded request from another peer. Every reply is
// sent only after the state it depends on is persisted.
func (rf *Raft) HandleRPC(_ context.Context, req []byte) ([]byte, error) {
	m, err := decodeMessage(req)
	if err != nil {
		return nil, fmt.Errorf("raft peer %d: %w", rf.me, err)
	}
	var reply message
	switch m := m.(type) {
	case *RequestVoteArgs:
		reply, err = rf.requestVote(m)
	case *AppendEntriesArgs:
		reply, err = rf.appendEntries(m)
	case *InstallSnapshotArgs:
		reply, err = rf.installSnapshot(m)
	default:
		return nil, fmt.Errorf("raft peer %d: %v is not a request", rf.me, m.kind())
	}
	if err != nil {
		return nil, err
	}
	return encodeMessage(reply), nil
}

// observeTerm handles a request's term (Figure 2, "All Servers"): it
// reports whether the request is from the current term (else it is stale
// and rejected) and whether persistent state changed.
func (rf *Raft) observeTerm(term uint64) (current, dirty bool) {
	if term < rf.term {
		return false, false
	}
	if term > rf.term {
		rf.becomeFollower(term)
		return true, true
	}
	return true, false
}

func (rf *Raft) requestVote(a *RequestVoteArgs) (*RequestVoteReply, error) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.stopped != nil {
		return nil, rf.stopped
	}
	// Section 5.4.1: vote only for a candidate whose log is at least as
	// up to date as ours.
	upToDate := a.LastLogTerm > rf.lastTerm() || (a.LastLogTerm == rf.lastTerm() && a.LastLogIndex >= rf.lastIndex())
	if a.PreVote {
		// Would we vote in a.Term? Changes nothing here.
		heardFromLeader := rf.role == leader || time.Since(rf.leaderContact) < rf.cfg.ElectionTimeout
		return &RequestVoteReply{Term: rf.term, Granted: a.Term > rf.term && upToDate && !heardFromLeader}, nil
	}
	current, dirty := rf.observeTerm(a.Term)
	reply := &RequestVoteReply{Term: rf.term}
	if !current || a.Candidate < 0 || a.Candidate >= rf.cfg.Peers {
		return reply, nil
	}
	if (rf.votedFor == -1 || rf.votedFor == a.Candidate) && upToDate {
		if rf.votedFor != a.Candidate {
			rf.votedFor = a.Candidate
			dirty = true
		}
		reply.Granted = true
		rf.resetElectionTimer()
	}
	if dirty && !rf.persist() {
		return nil, rf.stopped
	}
	return reply, nil
}

func (rf *Raft) appendEntries(a *AppendEntriesArgs) (*AppendEntriesReply, error) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.stopped != nil {
		return nil, rf.stopped
	}
	current, dirty := rf.observeTerm(a.Term)
	reply, changed := rf.appendEntriesLocked(a, current)
	if (dirty || changed) && !rf.persist() {
		return nil, rf.stopped
	}
	reply.Term = rf.term
	return reply, nil
}

func (rf *Raft) appendEntriesLocked(a *AppendEntriesArgs, current bool) (reply *AppendEntriesReply, changed bool) {
	reply = &AppendEntriesReply{}
	if !current {
		return reply, false
	}
	rf.role = follower // a candidate of this term yields to its leader
	rf.resetElectionTimer()
	rf.leaderContact = time.Now()
	prev, prevTerm, entries := a.PrevLogIndex, a.PrevLogTerm, a.Entries
	if prev < rf.snapIdx {
		// The prefix through snapIdx is committed here already, and so
		// equal to the leader's: skip the entries it covers.
		skip := rf.snapIdx - prev
		if skip > len(entries) {
			reply.Success = true
			return reply, false
		}
		entries = entries[skip:]
		prev, prevTerm = rf.snapIdx, rf.log_[0].Term
	}
	if prev > rf.lastIndex() {
		reply.LogLength = rf.lastIndex() + 1
		return reply, false
	}
	if t := rf.termAt(prev); t != prevTerm {
		reply.ConflictTerm = t
		i := prev
		for i > rf.snapIdx+1 && rf.termAt(i-1) == t {
			i--
		}
		reply.ConflictIndex = i
		reply.LogLength = rf.lastIndex() + 1
		return reply, false
	}
	// Truncate only at a real conflict: a delayed, shorter AppendEntries
	// must not cut entries a later one appended.
	for i, e := range entries {
		idx := prev + 1 + i
		if idx > rf.lastIndex() || rf.termAt(idx) != e.Term {
			rf.log_ = append(rf.log_[:idx-rf.snapIdx], entries[i:]...)
			changed = true
			break
		}
	}
	reply.Success = true
	if last := prev + len(entries); a.LeaderCommit > rf.commitIndex && last > rf.commitIndex {
		rf.commitIndex = min(a.LeaderCommit, last)
		rf.applyCond.Broadcast()
	}
	return reply, changed
}

func (rf *Raft) installSnapshot(a *InstallSnapshotArgs) (*InstallSnapshotReply, error) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.stopped != nil {
		return nil, rf.stopped
	}
	current, dirty := rf.observeTerm(a.Term)
	if current {
		rf.role = follower
		rf.resetElectionTimer()
		rf.leaderContact = time.Now()
		// A snapshot covering only committed entries brings nothing.
		if a.LastIncludedIndex > rf.commitIndex {
			if a.LastIncludedIndex <= rf.lastIndex() && rf.termAt(a.LastIncludedIndex) == a.LastIncludedTerm {
				rf.compact(a.LastIncludedIndex, a.LastIncludedTerm) // keep the suffix (Figure 13, step 6)
			} else {
				rf.log_ = []Entry{{Term: a.LastIncludedTerm}}
				rf.snapIdx = a.LastIncludedIndex
			}
			rf.snapshot = a.Data
			rf.commitIndex = a.LastIncludedIndex
			rf.snapshotPending = true
			rf.applyCond.Broadcast()
			dirty = true
		}
	}
	if dirty && !rf.persist() {
		return nil, rf.stopped
	}
	return &InstallSnapshotReply{Term: rf.term}, nil
}
