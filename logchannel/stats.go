package logchannel

import (
	"slices"
	"time"
)

// Stats is a snapshot of one end's metrics. Sender-only and receiver-only
// fields are zero on the other end.
type Stats struct {
	Role Role

	// Entries and Bytes are totals appended (sender) or received
	// (receiver); the PerSec fields cover the last second.
	Entries       uint64
	Bytes         uint64
	EntriesPerSec float64
	BytesPerSec   float64

	// LastSeq is the last seq appended (sender) or received (receiver).
	LastSeq         uint64
	AckedThrough    uint64
	ReplayedThrough uint64
	// Delivered (receiver): entries handed out by Next.
	Delivered uint64

	// Sender: appended but not yet acked.
	UnackedEntries uint64
	UnackedBytes   uint64
	// LagEntries is appended (sender) or received (receiver) minus
	// replayed; LagTime is the age of the oldest unreplayed entry (since
	// Append on the sender, since receipt of its batch on the receiver).
	LagEntries uint64
	LagTime    time.Duration
	// LagP50 and LagP99 are quantiles of LagTime over the last minute,
	// sampled every lagSampleEvery: what a failover would have had to
	// replay at a random moment, and at a bad one.
	LagP50, LagP99 time.Duration

	// BlockedAppends is how many Append calls are blocked on
	// back-pressure right now; BlockedTotal how many ever blocked.
	BlockedAppends int
	BlockedTotal   uint64

	AcksSent     uint64
	AcksReceived uint64

	// Batches is batch frames sent (sender) or received (receiver);
	// Entries/Batches is the achieved batching factor.
	Batches            uint64
	FramesSent         uint64
	FramesReceived     uint64
	HeartbeatsSent     uint64
	HeartbeatsReceived uint64
	// RTT is a smoothed round-trip estimate from heartbeats (0 until one
	// has made the round trip); LastHeard the age of the last frame.
	RTT       time.Duration
	LastHeard time.Duration
}

func (l *link) fillStats(st *Stats, now int64) {
	st.Batches = l.batches.Load()
	st.FramesSent = l.framesSent.Load()
	st.FramesReceived = l.framesRecvd.Load()
	st.HeartbeatsSent = l.hbSent.Load()
	st.HeartbeatsReceived = l.hbRecv.Load()
	st.RTT = l.rtt()
	st.LastHeard = time.Duration(now - l.lastHeard.Load())
}

// rateMeter counts events in ten 100 ms buckets, giving a rate over the
// last second without a goroutine. Its owner serializes access.
type rateMeter struct {
	buckets [10]struct {
		slot           int64
		entries, bytes uint64
	}
}

const meterSlot = int64(100 * time.Millisecond)

func (m *rateMeter) add(now int64, n int) {
	slot := now / meterSlot
	b := &m.buckets[slot%int64(len(m.buckets))]
	if b.slot != slot {
		b.slot, b.entries, b.bytes = slot, 0, 0
	}
	b.entries++
	b.bytes += uint64(n)
}

func (m *rateMeter) addMany(now int64, entries, bytes uint64) {
	slot := now / meterSlot
	b := &m.buckets[slot%int64(len(m.buckets))]
	if b.slot != slot {
		b.slot, b.entries, b.bytes = slot, 0, 0
	}
	b.entries += entries
	b.bytes += bytes
}

// rate sums the buckets of the last second (the current, partial bucket
// plus the nine before it).
func (m *rateMeter) rate(now int64) (entries, bytes float64) {
	slot := now / meterSlot
	for _, b := range m.buckets {
		if b.slot > slot-int64(len(m.buckets)) && b.slot <= slot {
			entries += float64(b.entries)
			bytes += float64(b.bytes)
		}
	}
	return entries, bytes
}

// lagSampleEvery and lagSamples shape the lag window: a sample every 100
// ms over the last minute.
const (
	lagSampleEvery = int64(100 * time.Millisecond)
	lagSamples     = 600
)

// lagWindow keeps the last lagSamples lag readings in a ring, without
// allocating. Its owner serializes access.
type lagWindow struct {
	ring   [lagSamples]time.Duration
	n      int // readings so far, capped at lagSamples
	next   int
	lastAt int64
}

// sample records lag if lagSampleEvery passed since the last reading.
func (w *lagWindow) sample(now int64, lag time.Duration) {
	if w.n > 0 && now-w.lastAt < lagSampleEvery {
		return
	}
	w.lastAt = now
	w.ring[w.next] = lag
	w.next = (w.next + 1) % lagSamples
	w.n = min(w.n+1, lagSamples)
}

// quantiles returns the median and the 99th percentile of the window.
func (w *lagWindow) quantiles() (p50, p99 time.Duration) {
	if w.n == 0 {
		return 0, 0
	}
	s := slices.Clone(w.ring[:w.n])
	slices.Sort(s)
	return s[w.n/2], s[min(w.n-1, w.n*99/100)]
}
