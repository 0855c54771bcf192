// Package logchannel owns the ordered, acknowledged, flow-controlled stream
// between a primary and its backup: framing, sequence numbers, acks,
// heartbeats, back-pressure, failure detection and metrics, over TCP, unix
// sockets or an in-memory pipe.
//
// It moves opaque entries; what an entry means belongs to package replay.
//
// # Roles
//
// The primary holds a [Sender] ([Dial], or [NewSender] on any net.Conn) and
// the backup a [Receiver] ([Listen] + [Listener.Accept], or [NewReceiver]).
// [Pipe] connects both in memory. A connection starts with a handshake that
// carries a magic, the protocol version, the sender's role, and the
// session and generation IDs; any mismatch fails the handshake with
// [ErrVersion] or [ErrHandshake] naming both values.
//
// # The output rule
//
// [Sender.Append] assigns consecutive sequence numbers starting at 1 and
// returns without waiting for the network. The backup acks on receipt (not
// on replay). An output produced by the entry at seq may leave the primary
// once [Sender.WaitAcked](seq) returns nil, or once the channel from
// [Sender.AckNotify](seq) is closed — the latter lets an output queue
// hold many outputs without a goroutine each. Only the output waits; the
// producer keeps appending.
//
// # Back-pressure
//
// Append blocks while unacked bytes exceed [Config.Window], or while the
// entries the backup has not yet replayed (reported with
// [Receiver.ReportReplayed]) reach [Config.MaxReplayLag]. On the backup,
// [Receiver.Next] waits while the log is empty.
//
// # Failure
//
// Both ends send heartbeats every [Config.HeartbeatInterval] and fail when
// nothing has been heard for [Config.Timeout]. Done is closed and Err
// wraps exactly one of [ErrClosed] (we closed), [ErrPeerClosed] (the peer
// sent a close frame: clean shutdown), [ErrPeerLost] (EOF or reset without
// a close frame: crash), [ErrPeerSilent] (timeout, with the silence's age)
// or [ErrCorrupt] (CRC mismatch, bad length, sequence gap — with the
// sequence number). A Receiver keeps delivering what it received before
// the failure, so a backup going live can replay the whole log. The
// channel never decides anything about failover itself; that is package
// failover's job.
//
// # Wire format
//
// See frame.go: every frame is type, length, payload and a CRC-32C; every
// length is bounded ([MaxEntrySize], [MaxFramePayload]) before anything is
// allocated, and every field has a single encoding, so the decoder is
// fuzzed for re-encoding identity ([DecodeFrame], [AppendFrame]).
package logchannel
