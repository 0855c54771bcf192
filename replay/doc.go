// Package replay owns the determinism layer: the event types, the recorder
// that logs every non-deterministic input on the primary, the replayer that
// serves those inputs to the backup at the same exit numbers, and divergence
// detection. It knows nothing of sockets or processes.
//
// Contents: the event model (event.go), its wire encoding (codec.go), the
// state digests (digest.go), the Recorder (recorder.go) and Replayer
// (replayer.go) that implement hypervisor/vm's Recorder and Replayer
// interfaces, and the memory tracking both share for digests and
// checkpoints (state.go). Package replication runs them over the log
// channel.
//
// # Exit counting
//
// Every log entry is placed "at exit #n": n counts the synchronous,
// guest-caused exits since power-on (PIO, MMIO, HLT, IRQ-window-open,
// debug), the first being #1; entries before the first KVM_RUN are at 0.
// Exits caused by a kick or a signal (EINTR, immediate_exit) are not
// counted, because they happen at a point in the instruction stream the
// backup cannot reproduce. With one vCPU, no in-kernel irqchip/PIT/clock and
// the CPUID policy of DESIGN.md, the guest's instruction stream between two
// counted exits is a pure function of its state, so "exit #n" names the
// same instruction on both sides.
//
// # When entries are emitted (primary) and consumed (backup)
//
// The exit loop handles exit #n in phases, and the entries of one exit
// appear in the log in the order the primary produced them:
//
//  1. ExitMark(n, kind, RIP) first, if the exit carries any other entry,
//     and on every K-th exit regardless. The backup compares kind and RIP.
//  2. The exit handler (port I/O, MMIO): every device Clock.Now() yields a
//     ClockRead; every block-device read of shared storage a DiskRead;
//     every block request whose outcome the backup cannot compute (writes,
//     failed reads) a DiskDone with the status. Outputs produced here may
//     yield Output hashes. The backup's devices get these values from the
//     replaying Clock / storage instead of the world, in log order; asking
//     for one when the next entry is something else, or is at another exit,
//     is a divergence.
//  3. expireTimers: TimerFired(n, timer, now) for every Expire the primary
//     ran; the backup calls Expire(now) with the logged now and never reads
//     a clock or compares deadlines itself.
//  4. feedConsole / feedFrames: ConsoleInput with the bytes the UART
//     accepted, FrameReceived with each frame handed to a network device.
//  5. While halted at an HLT exit, phases 3-4 repeat until the PIC asserts;
//     all of it is still at exit n.
//  6. Periodically, StateDigest(n, regs, memory) before the next KVM_RUN
//     (Recorder.BeforeRun), taken after the ExitMark because reading the
//     vCPU state completes a pending port I/O and moves RIP.
//  7. deliverInterrupt before the next KVM_RUN: InterruptInjected(n, vector)
//     for a KVM_INTERRUPT. The backup injects what its own PIC asserts and
//     compares with the entry. Replication injects only when the guest can
//     take the interrupt at this exit: no interrupt-window exits (see
//     hypervisor/vm's noWindows for why).
//  8. If the watchdog kicks the vCPU: Kick(n), CheckpointCPU and the
//     CheckpointChunk entries, then phases 3-7 again, all at exit n.
//
// The backup finishes exit n (phases 3-7) by applying every entry at
// exit n in order; it knows there is no more for n once it sees an entry
// at a later exit, which is why the primary emits ExitMark every K exits
// and before a batch flush (so a CPU-bound guest does not leave the backup
// waiting). The live clock for the loop's own bookkeeping (halt timeouts,
// the watchdog) is not a guest-visible read and is never logged; only the
// Clock handed to devices is recorded and replayed.
//
// # Divergence
//
// A divergence is any of: an ExitMark whose kind or RIP differs from the
// backup's exit #n; a device asking for an input the log does not have
// next at this exit (or the log having one the backup did not ask for
// before moving past the exit); an InterruptInjected vector that differs
// from the backup's own; a StateDigest that differs; an Output hash that
// differs. The backup stops and reports the first differing exit number
// with both sides' values (the entry and what the backup computed); it
// never continues past it (the report lists the last entries it replayed).
// Recovery (a resync by a fresh checkpoint) is not implemented: a diverged
// backup stops.
//
// # Kicks
//
// If the guest runs past a bound without an exit while an event is due,
// the primary's watchdog kicks the vCPU (DESIGN.md rule 5) and logs
// Kick(n), n being the last counted exit: what follows happened at an
// instruction the backup cannot find. The backup replays through exit n,
// then loads the checkpoint that follows the Kick (the primary's vCPU
// state in vm.CPUState's encoding, and every page written since the
// previous checkpoint: KVM's dirty log plus the pages virtio devices wrote)
// and goes on from there. Device models need no transfer: they change only
// at exits, identically on both sides.
//
// The pages travel in page chunks (pagechunk.go): zero, compressed content,
// or only a hash for a page not written since the last sync point, which the
// backup computed itself by replaying. A sync point is a BeforeRun at which
// the recorder read the dirty log (RecorderOptions.SyncInterval apart) or
// the previous checkpoint: there the backup, once it gets there, holds the
// primary's memory. The backup checks every hashed page and stops with
// ErrStateDiffers if its own differs.
//
// # Encoding
//
// Batches of entries: a version byte, then per entry a type byte, the exit
// number as a uvarint delta against the previous entry of the batch, and
// the type's fields, with RIPs and clock values delta-encoded too; see
// codec.go. Decoding treats the bytes as untrusted: every length is
// bounded, the encoding is canonical (a decoded batch re-encodes to the
// same bytes), and exit numbers may never go backwards, within a batch or
// across the batches one Decoder reads.
package replay
