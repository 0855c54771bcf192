// Package raft is our own implementation of Raft (Ongaro and Ousterhout,
// "In Search of an Understandable Consensus Algorithm", extended version),
// for the guest workloads: a replicated log whose committed commands and
// snapshots a service receives in order on an apply channel.
//
// What follows which part of the paper:
//
//   - Leader election with randomized timeouts (Section 5.2), the voting
//     restriction (5.4.1): raft.go startElection, handlers.go requestVote.
//     Two additions from Ongaro's thesis keep terms stable: PreVote (9.6:
//     a peer asks before it increments its term, and peers that hear from
//     a leader refuse) and CheckQuorum (6.2: a leader that has not heard
//     from a majority for two election timeouts steps down).
//   - Log replication and the commit rule (5.3, 5.4.2: only entries of the
//     leader's current term are committed by counting replicas): raft.go
//     replicator, advanceCommit; handlers.go appendEntries.
//   - Persistence (Figure 2, "Persistent state on all servers"): term,
//     vote and log are saved through a Persister before any reply or
//     action that depends on them (persist.go). FilePersister writes one
//     CRC-checked file atomically (temp file, fsync, rename, directory
//     fsync); MemoryPersister serves tests.
//   - Accelerated log backtracking (the optimization sketched at the end of
//     Section 5.3): a rejecting follower returns the conflicting term, the
//     first index it holds of that term and its log length, so the leader
//     skips a term per round trip (raft.go backtrack).
//   - Log compaction (Section 7, Figure 13): the service hands Raft a
//     snapshot with Snapshot; a leader sends InstallSnapshot (one message,
//     no chunks) to a follower that needs discarded entries.
//
// Not implemented: membership changes (Section 6), the leader's no-op at
// the start of its term (Section 8; services here read through the log,
// so a new leader commits its predecessors' entries with the next client
// operation).
//
// Messages are encoded by this package (message.go, wire.go) and carried
// as bytes by a Transport: TCPTransport and ServeTCP for peers in separate
// processes or guests (length-prefixed frames with deadlines), Network
// for tests (drops, delays, reorders, partitions, silent crashed peers).
// A Raft runs until its context ends or Kill, which waits for all its
// goroutines and then closes the apply channel.
package raft
