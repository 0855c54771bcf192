package logchannel

import (
	"container/heap"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"
)

// Sender is the primary's end. It owns sequence numbering, batching, the
// unacked window, the ack watermark the output rule waits on, and the
// bookkeeping for the backup's replay lag.
type Sender struct {
	l *link

	kick   chan struct{} // a batch became non-empty: start the linger timer
	urgent chan struct{} // a batch is full or Flush was called: send now

	mu       sync.Mutex
	nextSeq  uint64
	cur      []byte   // open batch frame being filled (header reserved)
	curFirst uint64   // seq of its first entry
	curCount int      // entries in it
	sealed   [][]byte // complete frames waiting for the writer
	free     [][]byte // written frame buffers kept for reuse
	// recs holds one record per entry in (replayed, nextSeq); recs[i] is
	// seq replayed+1+i. It serves unacked-byte accounting and the age of
	// the oldest unreplayed entry.
	recs      []entryRec
	recHead   int
	acked     uint64
	replayed  uint64
	unackedB  uint64
	progress  chan struct{} // closed and replaced whenever acks arrive
	waiters   waiterHeap
	blocked   int
	blockedN  uint64
	totEnt    uint64
	totBytes  uint64
	acksRecvd uint64
	meter     rateMeter
	lags      lagWindow
}

type entryRec struct {
	size uint32
	at   int64 // append time, ns since link epoch
}

// NewSender performs the handshake on conn as the primary and starts the
// sender. ctx bounds only the handshake; the sender lives until Close or
// failure.
func NewSender(ctx context.Context, conn net.Conn, cfg Config) (*Sender, error) {
	l, err := newLink(ctx, conn, cfg, RoleSender)
	if err != nil {
		return nil, err
	}
	s := &Sender{
		l:        l,
		kick:     make(chan struct{}, 1),
		urgent:   make(chan struct{}, 1),
		nextSeq:  1,
		progress: make(chan struct{}),
	}
	l.sampleLag = s.sampleLag
	l.start()
	l.wg.Add(2)
	go s.reader()
	go s.writer()
	return s, nil
}

// Append copies entry into the log and returns its sequence number. It
// does not wait for the network; it blocks only for back-pressure (unacked
// bytes over the window, or replay lag at its bound) until acks relieve it,
// ctx ends, or the channel fails.
func (s *Sender) Append(ctx context.Context, entry []byte) (uint64, error) {
	if len(entry) > MaxEntrySize {
		return 0, fmt.Errorf("logchannel: append: entry size %d exceeds MaxEntrySize %d", len(entry), MaxEntrySize)
	}
	s.mu.Lock()
	counted := false
	for {
		if err := s.l.failed(); err != nil {
			s.unblock(counted)
			s.mu.Unlock()
			return 0, fmt.Errorf("logchannel: append: %w", err)
		}
		if !s.mustWait(len(entry)) {
			break
		}
		if !counted {
			counted = true
			s.blocked++
			s.blockedN++
		}
		ch := s.progress
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.unblock(counted)
			s.mu.Unlock()
			return 0, fmt.Errorf("logchannel: append blocked by back-pressure: %w", ctx.Err())
		case <-s.l.done:
		case <-ch:
		}
		s.mu.Lock()
	}
	s.unblock(counted)
	seq := s.nextSeq
	s.nextSeq++
	wasEmpty := s.curCount == 0
	if wasEmpty {
		s.cur = s.newBatchBuf(len(entry))
		s.cur = append(s.cur, byte(FrameBatch), 0, 0, 0, 0)
		s.cur = append(s.cur, make([]byte, batchHeaderSize)...)
		s.curFirst = seq
	}
	s.cur = appendEntry(s.cur, entry)
	s.curCount++
	now := s.l.now()
	s.recs = append(s.recs, entryRec{size: uint32(len(entry)), at: now})
	s.unackedB += uint64(len(entry))
	s.totEnt++
	s.totBytes += uint64(len(entry))
	s.meter.add(now, len(entry))
	full := len(s.cur)-frameHeaderSize-batchHeaderSize >= s.l.cfg.MaxBatchBytes || s.curCount >= s.l.cfg.MaxBatchEntries
	if full {
		s.sealLocked()
	}
	s.mu.Unlock()
	switch {
	case full:
		signal(s.urgent)
	case wasEmpty:
		signal(s.kick)
	}
	return seq, nil
}

// newBatchBuf returns an empty buffer big enough for a full batch, so
// filling it never reallocates and copies (that dominated CPU profiles).
func (s *Sender) newBatchBuf(first int) []byte {
	if n := len(s.free); n > 0 {
		b := s.free[n-1]
		s.free = s.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, frameHeaderSize+batchHeaderSize+s.l.cfg.MaxBatchBytes+4+max(first, 4<<10)+frameTrailer)
}

func (s *Sender) unblock(counted bool) {
	if counted {
		s.blocked--
	}
}

// mustWait: the window admits one entry however large when nothing is
// unacked, so an entry bigger than the window cannot deadlock.
func (s *Sender) mustWait(n int) bool {
	if s.unackedB > 0 && s.unackedB+uint64(n) > uint64(s.l.cfg.Window) {
		return true
	}
	lag := s.nextSeq - 1 - s.replayed
	if s.l.cfg.MaxReplayLag > 0 && lag >= s.l.cfg.MaxReplayLag {
		return true
	}
	// Acks that report replay progress wake a waiting Append to look again.
	return s.l.cfg.MaxReplayLagTime > 0 && lag > 0 &&
		time.Duration(s.l.now()-s.recs[s.recHead].at) > s.l.cfg.MaxReplayLagTime
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (s *Sender) sealLocked() {
	if s.curCount == 0 {
		return
	}
	b := s.cur
	binary.LittleEndian.PutUint64(b[frameHeaderSize:], s.curFirst)
	binary.LittleEndian.PutUint32(b[frameHeaderSize+8:], uint32(s.curCount))
	s.sealed = append(s.sealed, sealFrame(b, 0))
	s.cur, s.curCount = nil, 0
}

// Flush asks for the open batch to be sent now instead of after the linger.
// It does not wait for the write.
func (s *Sender) Flush() {
	s.mu.Lock()
	s.sealLocked()
	s.mu.Unlock()
	signal(s.urgent)
}

// writePendingLocked writes every sealed batch plus the open one. The
// caller holds wmu; taking the batches under wmu keeps frames in sequence
// order whoever writes them.
func (s *Sender) writePendingLocked() error {
	s.mu.Lock()
	s.sealLocked()
	frames := s.sealed
	s.sealed = nil
	s.mu.Unlock()
	if len(frames) == 0 {
		return nil
	}
	for _, f := range frames {
		if _, err := s.l.bw.Write(f); err != nil {
			return err
		}
	}
	s.l.framesSent.Add(uint64(len(frames)))
	s.l.batches.Add(uint64(len(frames)))
	err := s.l.bw.Flush()
	// bufio keeps no reference to written slices, so they can be reused.
	s.mu.Lock()
	for _, f := range frames {
		if len(s.free) < 4 && cap(f) <= 2*(frameHeaderSize+batchHeaderSize+s.l.cfg.MaxBatchBytes+(4<<10)+8) {
			s.free = append(s.free, f[:0])
		}
	}
	s.mu.Unlock()
	return err
}

func (s *Sender) flushAll() {
	s.l.wmu.Lock()
	err := s.writePendingLocked()
	s.l.wmu.Unlock()
	if err != nil {
		s.l.writeErr(err)
	}
}

// writer sends batches when they fill up, are flushed, or linger expires.
func (s *Sender) writer() {
	defer s.l.wg.Done()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	var lingerC <-chan time.Time
	for {
		select {
		case <-s.l.ctx.Done():
			return
		case <-s.urgent:
			s.flushAll()
		case <-s.kick:
			if lingerC == nil {
				linger.Reset(s.l.cfg.Linger)
				lingerC = linger.C
			}
		case <-lingerC:
			lingerC = nil
			s.flushAll()
		}
	}
}

func (s *Sender) reader() {
	defer s.l.wg.Done()
	for {
		f, _, err := readFrame(s.l.br)
		if err != nil {
			if s.l.failed() == nil {
				s.l.fail(s.l.readerError(err, 0, fmt.Sprintf("acked through %d", s.AckedThrough())))
			}
			return
		}
		s.l.heard()
		switch f.Type {
		case FrameAck:
			if err := s.onAck(f.Acked, f.Replayed); err != nil {
				s.l.fail(err)
				return
			}
		case FrameHeartbeat:
			s.l.onHeartbeat(&f)
		case FrameClose:
			s.l.fail(fmt.Errorf("%w (%s)", ErrPeerClosed, f.Reason))
			return
		default:
			s.l.fail(fmt.Errorf("%w: receiver sent a %v frame", ErrCorrupt, f.Type))
			return
		}
	}
}

func (s *Sender) onAck(acked, replayed uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acksRecvd++
	if acked >= s.nextSeq {
		return fmt.Errorf("%w: ack through seq %d but only %d appended", ErrCorrupt, acked, s.nextSeq-1)
	}
	if acked < s.acked || replayed < s.replayed {
		return fmt.Errorf("%w: ack went backwards (acked %d after %d, replayed %d after %d)", ErrCorrupt, acked, s.acked, replayed, s.replayed)
	}
	if acked == s.acked && replayed == s.replayed {
		return nil
	}
	// recs[recHead+i] is seq s.replayed+1+i.
	for seq := s.acked + 1; seq <= acked; seq++ {
		s.unackedB -= uint64(s.recs[s.recHead+int(seq-s.replayed-1)].size)
	}
	s.recHead += int(replayed - s.replayed)
	s.acked, s.replayed = acked, replayed
	if s.recHead >= 1024 && s.recHead*2 >= len(s.recs) {
		s.recs = append(s.recs[:0], s.recs[s.recHead:]...)
		s.recHead = 0
	}
	close(s.progress)
	s.progress = make(chan struct{})
	for len(s.waiters) > 0 && s.waiters[0].seq <= acked {
		close(heap.Pop(&s.waiters).(ackWaiter).ch)
	}
	return nil
}

// AckedThrough returns the highest seq the backup has acknowledged: every
// entry up to it is safe on the backup.
func (s *Sender) AckedThrough() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// LastAppended is the sequence number of the last entry appended (0 before
// the first).
func (s *Sender) LastAppended() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextSeq - 1
}

// AckNotify returns a channel that is closed once seq is acknowledged. It
// is never closed if the channel fails first; select on Done as well. This
// lets the output path hold many outputs without a goroutine each.
func (s *Sender) AckNotify(seq uint64) <-chan struct{} {
	ch := make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.acked {
		close(ch)
		return ch
	}
	heap.Push(&s.waiters, ackWaiter{seq: seq, ch: ch})
	return ch
}

// WaitAcked blocks until seq is acknowledged (the output rule: an output
// produced at seq may leave once this returns nil), ctx ends, or the
// channel fails.
func (s *Sender) WaitAcked(ctx context.Context, seq uint64) error {
	ch := s.AckNotify(seq)
	select {
	case <-ch:
		return nil
	default:
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("logchannel: waiting for ack of seq %d: %w", seq, ctx.Err())
	case <-s.l.done:
		select {
		case <-ch: // acked just before the failure
			return nil
		default:
		}
		return fmt.Errorf("logchannel: waiting for ack of seq %d (acked through %d): %w", seq, s.AckedThrough(), s.l.err)
	}
}

// Done is closed when the channel has failed or been closed; Err says why.
func (s *Sender) Done() <-chan struct{} { return s.l.done }

// Err returns nil while the channel is up, else why it ended (wrapping one
// of ErrClosed, ErrPeerClosed, ErrPeerLost, ErrPeerSilent, ErrCorrupt).
func (s *Sender) Err() error { return s.l.failed() }

// Close sends everything appended so far and a close frame, then tears
// the connection down. Entries not yet acked stay unacked.
func (s *Sender) Close() error {
	return s.l.shutdown(s.writePendingLocked)
}

// lagLocked is the age of the oldest entry the backup has not replayed.
func (s *Sender) lagLocked(now int64) time.Duration {
	if s.nextSeq-1 == s.replayed {
		return 0
	}
	return time.Duration(now - s.recs[s.recHead].at)
}

func (s *Sender) sampleLag(now int64) {
	s.mu.Lock()
	s.lags.sample(now, s.lagLocked(now))
	s.mu.Unlock()
}

// Stats returns a snapshot of the sender's metrics.
func (s *Sender) Stats() Stats {
	now := s.l.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Role:            RoleSender,
		LastSeq:         s.nextSeq - 1,
		AckedThrough:    s.acked,
		ReplayedThrough: s.replayed,
		Entries:         s.totEnt,
		Bytes:           s.totBytes,
		UnackedEntries:  s.nextSeq - 1 - s.acked,
		UnackedBytes:    s.unackedB,
		LagEntries:      s.nextSeq - 1 - s.replayed,
		AcksReceived:    s.acksRecvd,
		BlockedAppends:  s.blocked,
		BlockedTotal:    s.blockedN,
	}
	st.LagTime = s.lagLocked(now)
	st.LagP50, st.LagP99 = s.lags.quantiles()
	st.EntriesPerSec, st.BytesPerSec = s.meter.rate(now)
	s.l.fillStats(&st, now)
	return st
}

type ackWaiter struct {
	seq uint64
	ch  chan struct{}
}

// waiterHeap is a min-heap of ack waiters by seq.
type waiterHeap []ackWaiter

func (h waiterHeap) Len() int           { return len(h) }
func (h waiterHeap) Less(i, j int) bool { return h[i].seq < h[j].seq }
func (h waiterHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *waiterHeap) Push(x any)        { *h = append(*h, x.(ackWaiter)) }
func (h *waiterHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
