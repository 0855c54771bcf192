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
// [Pipe] connects both in memory. On TCP both ends first authenticate
// each other (see Authentication). A connection starts with a handshake that
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
// # Authentication
//
// Whoever can reach a backup's TCP port could otherwise feed it entries as
// its primary, and whoever can answer at the backup's address could ack a
// primary's outputs (releasing them) as its backup. So on TCP both ends authenticate with mutual TLS
// 1.3 ([Config.Auth], loaded with [LoadAuth] from a directory holding
// ca.pem, cert.pem and key.pem). Each pair has a CA of its own
// ([NewPairCredentials], [WritePairCredentials]; `ftctl pair certs`),
// whose key signs the primary's and the backup's certificates and is then
// dropped. A certificate names its pair and role in a URI SAN
// (ftvm-logchannel:PAIR/primary or .../backup) and carries its side's key
// usage (client for the primary, server for the backup). Each end checks
// the other's certificate against the pair's CA, the pair name and the
// other role: a backup's certificate (taken from its host) cannot feed a
// backup, a primary's cannot pose as a backup to collect entries. Host names play
// no part. The hello that follows runs inside TLS.
//
// [Dial] and [Listen] refuse TCP without Config.Auth ([ErrNoAuth]) unless
// [Config.InsecureTCP] is set, which only this package's tests and
// benchmarks do, on loopback. Unix sockets need no credentials (the
// socket file's permissions guard them); Config.Auth works on them and on
// any conn given to [NewSender], [NewReceiver] or [Connect] too.
//
// A failed authentication wraps [ErrAuth] on both ends, naming the peer
// and the reason: "peer ADDR not authenticated: ..." on the end that
// refused the other's certificate (or got none, or a peer that does not
// speak TLS), "peer ADDR refused this end's credentials: ..." on the other.
// [Listener.Accept] logs such a peer as a warning and keeps waiting for
// its primary, so that reaching the port is not enough to stop a backup;
// it runs handshakes side by side, each bounded by
// [Config.HandshakeTimeout], so peers that connect and stay silent neither
// hang it nor delay the primary. BenchmarkThroughput measures what TLS
// costs (tls-vs-plain: rate and CPU ratios).
//
// # Wire format
//
// See frame.go: every frame is type, length, payload and a CRC-32C; every
// length is bounded ([MaxEntrySize], [MaxFramePayload]) before anything is
// allocated, and every field has a single encoding, so the decoder is
// fuzzed for re-encoding identity ([DecodeFrame], [AppendFrame]).
package logchannel
