// Package logchannel owns the ordered, acknowledged, flow-controlled stream
// between a primary and its backup: framing, sequence numbers, acks,
// heartbeats, back-pressure and metrics, over TCP and unix sockets.
//
// It moves opaque entries; what an entry means belongs to package replay.
package logchannel
