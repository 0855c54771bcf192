package network

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// DefaultSendQueue is the number of frames a port queues for sending before
// Send starts dropping. Enough for a burst of a TCP window of full-size
// frames; the bound is what keeps Send from blocking the vCPU loop when the
// other end stalls.
const DefaultSendQueue = 256

var (
	// ErrQueueFull reports a frame dropped by Send because the send queue is
	// full. Ethernet is allowed to lose frames; callers count, not retry.
	ErrQueueFull = errors.New("send queue full, frame dropped")
	// ErrClosed reports use of a port after Close or after it failed.
	ErrClosed = errors.New("port closed")
)

// DeliverFunc receives one frame read from a port. The frame is newly
// allocated and belongs to the callee. It runs on the port's reader goroutine
// and must not block for long: while it runs the port reads nothing, and a
// switch port that is not read stalls the whole switch. It returns false when
// it had to drop the frame (for example because the VMM's queue is full); the
// port counts those. It may call Send but not Close (Close waits for it).
type DeliverFunc func(frame []byte) bool

// Port is one attachment of a VM's NIC to a network: a SwitchPort (the
// embedded switch) or a Tap (a tap device on a Linux bridge).
type Port interface {
	// Send queues frame (copied) for transmission and returns at once. It
	// returns ErrQueueFull if the queue is full, ErrClosed after the port is
	// closed or failed, and an error for a frame of impossible size.
	Send(frame []byte) error
	// Start begins delivering received frames to deliver; it may be called
	// once. Until then frames wait in the kernel's socket buffer.
	Start(deliver DeliverFunc) error
	// Done is closed when the port stops: Close was called or the other end
	// went away (then Err says why and the VMM may attach again).
	Done() <-chan struct{}
	// Err returns the error that stopped the port, or nil if it is running
	// or was closed by Close.
	Err() error
	// Stats returns the port's counters.
	Stats() PortStats
	// Close stops the port and releases its socket or device.
	Close() error
}

// PortStats counts a port's traffic. Counters only grow.
type PortStats struct {
	SentFrames    uint64 // frames written to the network
	SentBytes     uint64
	SendDropped   uint64 // frames Send refused because the queue was full
	RecvFrames    uint64 // frames read from the network and delivered
	RecvBytes     uint64
	RecvDropped   uint64 // frames the DeliverFunc reported as dropped
	RecvTruncated uint64 // frames the backend dropped as malformed
}

// frameIO is what a backend supplies to a port: how to read one frame and how
// to write a batch of them.
type frameIO interface {
	// readFrame returns the next frame in a slice the caller owns. A frame
	// that the backend wants skipped (malformed but not fatal) is reported
	// as (nil, nil).
	readFrame() ([]byte, error)
	// writeFrames writes the frames in order.
	writeFrames(frames [][]byte) error
	// close releases the backend and unblocks readFrame and writeFrames.
	close() error
}

// portCore is the machinery shared by every Port: the bounded send queue
// drained by a writer goroutine, the reader goroutine feeding a DeliverFunc,
// the counters, and one-shot shutdown.
type portCore struct {
	io    frameIO
	name  string // for error messages: "switch port /run/ftvm/net.sock"
	sendq chan []byte
	done  chan struct{}

	stopOnce  sync.Once
	startOnce sync.Once
	wg        sync.WaitGroup

	mu  sync.Mutex
	err error

	sentFrames, sentBytes, sendDropped                atomic.Uint64
	recvFrames, recvBytes, recvDropped, recvTruncated atomic.Uint64
}

func newPortCore(name string, fio frameIO, queue int) *portCore {
	if queue <= 0 {
		queue = DefaultSendQueue
	}
	p := &portCore{
		io:    fio,
		name:  name,
		sendq: make(chan []byte, queue),
		done:  make(chan struct{}),
	}
	p.wg.Add(1)
	go p.writer()
	return p
}

// maxBatch bounds how many queued frames the writer hands the backend at
// once (one writev for the switch stream).
const maxBatch = 64

func (p *portCore) Send(frame []byte) error {
	if err := checkFrame(frame); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s: %w", p.name, ErrClosed)
	default:
	}
	// Copy: the caller (the virtio device) reuses its buffers as soon as Send
	// returns, but the writer goroutine writes later.
	buf := append([]byte(nil), frame...)
	select {
	case p.sendq <- buf:
		return nil
	default:
		p.sendDropped.Add(1)
		return fmt.Errorf("%s: %w", p.name, ErrQueueFull)
	}
}

func (p *portCore) writer() {
	defer p.wg.Done()
	batch := make([][]byte, 0, maxBatch)
	for {
		select {
		case <-p.done:
			return
		case f := <-p.sendq:
			batch = append(batch[:0], f)
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case f := <-p.sendq:
				batch = append(batch, f)
			default:
				break fill
			}
		}
		if err := p.io.writeFrames(batch); err != nil {
			p.fail(fmt.Errorf("%s: write: %w", p.name, err))
			return
		}
		for _, f := range batch {
			p.sentFrames.Add(1)
			p.sentBytes.Add(uint64(len(f)))
		}
		clear(batch) // drop references so sent frames can be collected
	}
}

func (p *portCore) Start(deliver DeliverFunc) error {
	if deliver == nil {
		return fmt.Errorf("%s: start: nil DeliverFunc", p.name)
	}
	started := false
	p.startOnce.Do(func() {
		started = true
		p.wg.Add(1)
		go p.reader(deliver)
	})
	if !started {
		return fmt.Errorf("%s: start: already started", p.name)
	}
	return nil
}

func (p *portCore) reader(deliver DeliverFunc) {
	defer p.wg.Done()
	for {
		frame, err := p.io.readFrame()
		if err != nil {
			p.fail(fmt.Errorf("%s: read: %w", p.name, err))
			return
		}
		if frame == nil {
			p.recvTruncated.Add(1)
			continue
		}
		p.recvFrames.Add(1)
		p.recvBytes.Add(uint64(len(frame)))
		if !deliver(frame) {
			p.recvDropped.Add(1)
		}
	}
}

// fail stops the port because of err, unless it is already stopping (then
// err is a consequence of that, not news).
func (p *portCore) fail(err error) { p.stop(err) }

// stop records err (nil for Close), wakes the writer and closes the backend,
// which ends the reader's blocked read.
func (p *portCore) stop(err error) {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
		_ = p.io.close()
	})
}

func (p *portCore) Done() <-chan struct{} { return p.done }

func (p *portCore) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *portCore) Stats() PortStats {
	return PortStats{
		SentFrames:    p.sentFrames.Load(),
		SentBytes:     p.sentBytes.Load(),
		SendDropped:   p.sendDropped.Load(),
		RecvFrames:    p.recvFrames.Load(),
		RecvBytes:     p.recvBytes.Load(),
		RecvDropped:   p.recvDropped.Load(),
		RecvTruncated: p.recvTruncated.Load(),
	}
}

// Close stops the port and waits for its goroutines; frames still queued are
// discarded. It returns the error that had stopped the port, if any.
func (p *portCore) Close() error {
	p.stop(nil)
	p.wg.Wait()
	return p.Err()
}
