// Package replication runs a VM as one side of a fault-tolerant pair: the
// primary records every non-deterministic input into the log channel and
// holds its outputs under the output rule; the backup replays the log exit
// for exit and checks the primary's state digests. It composes package
// instance (the VM with its network and disks), replay (what the log means)
// and logchannel (how it travels); failure detection and going live are
// package failover's.
//
// # The output rule
//
// A frame the guest sends or a block it writes is an output. The primary
// puts it in its Gate the moment the guest produces it, and the guest goes
// on running. When the exit that produced it ends, the recorder hands the
// log through that exit to the log channel and the gate seals the outputs
// with that entry's sequence number; a releaser goroutine lets them out in
// order once the backup acknowledged that entry. A read of a disk sees the
// writes still held (the guest was told they are done).
//
// If the backup is lost, nothing is acknowledged any more: outputs stay
// held, the guest is paused at its next output, and Status says so.
// Deciding to go on alone is failover's job (arbitration), not this
// package's.
package replication
