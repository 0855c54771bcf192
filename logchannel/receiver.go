package logchannel

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// Receiver is the backup's end. It owns sequence checking, the queue of
// received-but-undelivered entries, acking on receipt, and carrying the
// backup's replay position back to the primary.
type Receiver struct {
	l *link

	ackKick chan struct{}

	mu        sync.Mutex
	received  uint64   // highest seq received (all before it too)
	queue     [][]byte // undelivered entries; queue[qHead] is seq delivered+1
	qHead     int
	delivered uint64
	replayed  uint64
	avail     chan struct{} // closed and replaced when entries arrive
	ackedSent uint64        // last acked/replayed values sent
	replSent  uint64
	acksSent  uint64
	totBytes  uint64
	meter     rateMeter
	lags      lagWindow
	// arrivals has one record per received batch not yet fully replayed,
	// for the age of the oldest unreplayed entry.
	arrivals []arrival
}

type arrival struct {
	last uint64 // last seq of the batch
	at   int64  // receipt time, ns since link epoch
}

// NewReceiver performs the handshake on conn as the backup and starts the
// receiver. ctx bounds only the handshake.
func NewReceiver(ctx context.Context, conn net.Conn, cfg Config) (*Receiver, error) {
	l, err := newLink(ctx, conn, cfg, RoleReceiver)
	if err != nil {
		return nil, err
	}
	r := &Receiver{
		l:       l,
		ackKick: make(chan struct{}, 1),
		avail:   make(chan struct{}),
	}
	l.sampleLag = r.sampleLag
	l.start()
	l.wg.Add(2)
	go r.reader()
	go r.writer()
	return r, nil
}

func (r *Receiver) reader() {
	defer r.l.wg.Done()
	for {
		f, _, err := readFrame(r.l.br)
		if err != nil {
			if r.l.failed() == nil {
				r.mu.Lock()
				next := r.received + 1
				r.mu.Unlock()
				r.l.fail(r.l.readerError(err, next, fmt.Sprintf("expecting seq %d", next)))
			}
			return
		}
		r.l.heard()
		switch f.Type {
		case FrameBatch:
			if err := r.onBatch(&f); err != nil {
				r.l.fail(err)
				return
			}
			signal(r.ackKick)
		case FrameHeartbeat:
			r.l.onHeartbeat(&f)
		case FrameClose:
			r.l.fail(fmt.Errorf("%w (%s)", ErrPeerClosed, f.Reason))
			return
		default:
			r.l.fail(fmt.Errorf("%w: sender sent a %v frame", ErrCorrupt, f.Type))
			return
		}
	}
}

func (r *Receiver) onBatch(f *Frame) error {
	now := r.l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if f.FirstSeq != r.received+1 {
		return fmt.Errorf("%w: batch starts at seq %d, want %d (gap or reorder)", ErrCorrupt, f.FirstSeq, r.received+1)
	}
	var n uint64
	for _, e := range f.Entries {
		n += uint64(len(e))
	}
	if r.qHead > 0 && r.qHead*2 >= len(r.queue) {
		r.queue = append(r.queue[:0], r.queue[r.qHead:]...)
		r.qHead = 0
	}
	r.queue = append(r.queue, f.Entries...)
	r.arrivals = append(r.arrivals, arrival{last: f.FirstSeq + uint64(len(f.Entries)) - 1, at: now})
	r.l.batches.Add(1)
	r.received += uint64(len(f.Entries))
	r.totBytes += n
	r.meter.addMany(now, uint64(len(f.Entries)), n)
	close(r.avail)
	r.avail = make(chan struct{})
	return nil
}

// Next returns the next entry in order, waiting while the log is empty.
// After the channel ends it still returns every entry received before the
// end (a backup going live replays the whole log), then the channel's
// error. The entry belongs to the caller.
func (r *Receiver) Next(ctx context.Context) (uint64, []byte, error) {
	for {
		r.mu.Lock()
		if r.qHead < len(r.queue) {
			e := r.queue[r.qHead]
			r.queue[r.qHead] = nil
			r.qHead++
			r.delivered++
			seq := r.delivered
			r.mu.Unlock()
			return seq, e, nil
		}
		ch := r.avail
		r.mu.Unlock()
		if err := r.l.failed(); err != nil {
			// The reader has stopped; re-check the queue once so that
			// entries it queued just before failing are not lost.
			r.mu.Lock()
			more := r.qHead < len(r.queue)
			r.mu.Unlock()
			if more {
				continue
			}
			return 0, nil, fmt.Errorf("logchannel: next after seq %d: %w", r.delivered, err)
		}
		select {
		case <-ctx.Done():
			return 0, nil, fmt.Errorf("logchannel: waiting for seq %d: %w", r.delivered+1, ctx.Err())
		case <-ch:
		case <-r.l.done:
		}
	}
}

// ReportReplayed records that the backup has replayed every entry through
// seq. It is carried to the primary with the next ack (for its lag bound
// and metrics). Values beyond what was delivered are clamped; going
// backwards is ignored.
func (r *Receiver) ReportReplayed(seq uint64) {
	r.mu.Lock()
	seq = min(seq, r.delivered)
	changed := seq > r.replayed
	if changed {
		r.replayed = seq
		i := 0
		for i < len(r.arrivals) && r.arrivals[i].last <= seq {
			i++
		}
		r.arrivals = append(r.arrivals[:0], r.arrivals[i:]...)
	}
	r.mu.Unlock()
	if changed {
		signal(r.ackKick)
	}
}

// writer sends acks: immediately once AckEvery entries are unacked, else
// AckDelay after the first unacked entry or replay report.
func (r *Receiver) writer() {
	defer r.l.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	var tC <-chan time.Time
	for {
		select {
		case <-r.l.ctx.Done():
			return
		case <-r.ackKick:
			r.mu.Lock()
			urgent := r.received-r.ackedSent >= uint64(r.l.cfg.AckEvery)
			r.mu.Unlock()
			if urgent {
				r.sendAck()
			} else if tC == nil {
				t.Reset(r.l.cfg.AckDelay)
				tC = t.C
			}
		case <-tC:
			tC = nil
			r.sendAck()
		}
	}
}

func (r *Receiver) sendAck() {
	r.l.wmu.Lock()
	defer r.l.wmu.Unlock()
	if err := r.writeAckLocked(); err != nil {
		r.l.writeErr(err)
	}
}

// writeAckLocked sends an ack if anything changed; the caller holds wmu.
func (r *Receiver) writeAckLocked() error {
	r.mu.Lock()
	f := Frame{Type: FrameAck, Acked: r.received, Replayed: r.replayed}
	if f.Acked == r.ackedSent && f.Replayed == r.replSent {
		r.mu.Unlock()
		return nil
	}
	r.ackedSent, r.replSent = f.Acked, f.Replayed
	r.acksSent++
	r.mu.Unlock()
	return r.l.writeLocked(&f)
}

// Done is closed when the channel has failed or been closed; Err says why.
func (r *Receiver) Done() <-chan struct{} { return r.l.done }

// Err returns nil while the channel is up, else why it ended (wrapping one
// of ErrClosed, ErrPeerClosed, ErrPeerLost, ErrPeerSilent, ErrCorrupt).
func (r *Receiver) Err() error { return r.l.failed() }

// Close sends a final ack and a close frame, then tears the connection
// down. Entries already received stay available to Next.
func (r *Receiver) Close() error {
	return r.l.shutdown(r.writeAckLocked)
}

// lagLocked is the age of the oldest received entry not yet replayed.
func (r *Receiver) lagLocked(now int64) time.Duration {
	if r.received == r.replayed || len(r.arrivals) == 0 {
		return 0
	}
	return time.Duration(now - r.arrivals[0].at)
}

func (r *Receiver) sampleLag(now int64) {
	r.mu.Lock()
	r.lags.sample(now, r.lagLocked(now))
	r.mu.Unlock()
}

// Stats returns a snapshot of the receiver's metrics.
func (r *Receiver) Stats() Stats {
	now := r.l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{
		Role:            RoleReceiver,
		Entries:         r.received,
		Bytes:           r.totBytes,
		LastSeq:         r.received,
		AckedThrough:    r.ackedSent,
		ReplayedThrough: r.replayed,
		Delivered:       r.delivered,
		LagEntries:      r.received - r.replayed,
		AcksSent:        r.acksSent,
	}
	st.LagTime = r.lagLocked(now)
	st.LagP50, st.LagP99 = r.lags.quantiles()
	st.EntriesPerSec, st.BytesPerSec = r.meter.rate(now)
	r.l.fillStats(&st, now)
	return st
}
