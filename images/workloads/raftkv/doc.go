// Package raftkv is a replicated key/value service on package raft: Put,
// Append and Get, as the Raft paper's Section 8 (client interaction)
// describes it.
//
//   - Every op, Get included, is a command in the Raft log (op.go): reads
//     are linearizable without leases or read-index, at the price of a log
//     round per Get.
//   - Exactly-once execution of retried requests: a clerk tags each op
//     with its random client id and a sequence number; the state machine
//     keeps the last executed sequence number per client and skips
//     repeats (state.apply). The table is part of the snapshot.
//   - Log compaction (Section 7): when the persisted Raft state reaches
//     Config.MaxRaftState bytes, the server hands Raft a snapshot of the
//     map and the dedup table.
//   - Clerk retries an op across servers until one that leads commits it.
//   - RunNode/ServeNode run a replica as a guest will: one TCP port for
//     peers and clerks (requests are told apart by their first byte), a
//     data directory for raft.FilePersister.
//   - Model and History check a client's view with porcupine.
package raftkv
