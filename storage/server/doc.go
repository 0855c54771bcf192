// Package server owns the fencing storage server: the one process that
// opens a storage directory's disk files and holds the pairs' arbiter
// records, so that a claim and the writes it fences meet in one place.
// VMMs reach their disks through it (Client, Disk) instead of opening the
// files, and every write or flush carries the generation its writer holds.
//
// The guarantee: a write or flush carrying generation g is applied only if
// g is the pair's current generation, checked and applied under the
// pair's fence (shared); a claim through the server (Server.Claim,
// Client.Claim) holds the fence exclusively while it asks the arbiter. So
// once a claim that makes g+1 returns, every write of g admitted before it
// has landed, and every later one is refused with a *FencedError naming
// both generations, however long its writer was paused. A claim made at
// the arbiter directly, not through the server, takes effect here when a
// request carrying the new generation arrives (the new owner's OpenDisk
// announces it, before its first write); sides that share a server should
// claim through it.
//
// # Protocol
//
// A stream (unix socket, or TCP) of frames, each a 4-byte big-endian body
// length (1 to MaxIO+1024) and the body. The client sends a request and
// waits for its reply. Integers are big-endian; str8 is a length byte and
// the bytes, str16 a 2-byte length and the bytes.
//
//	request  op u8, tag u32, pair str8, then by op:
//	  info   disk str8, gen u64            -> size u64, id str8, record
//	  read   disk str8, off u64, len u32   -> data (len bytes)
//	  write  disk str8, gen u64, off u64, data (the rest, 1..MaxIO bytes)
//	  flush  disk str8, gen u64
//	  claim  owner str8, seen u64          -> record
//	  record                               -> record
//	reply    tag u32, status u8, then the result above (status 0), or
//	         message str16, gen u64, record (an error: gen is the writer's
//	         generation when fenced, the seen one when a claim lost)
//	record   pair str8, generation u64, owner str8, claimed unix ns u64,
//	         damaged str16
//
// The decoder checks every length against what is left of the frame and
// refuses names that are not valid disk or pair names, reads and writes
// of 0 or more than MaxIO bytes, and ranges outside the disk (without
// overflow); such a request gets an error reply and the connection goes
// on. A frame whose length is out of bounds gets an error reply and the
// connection is closed, since the stream cannot be followed after it.
package server
