package replication

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
)

// OutputKind says what an output is: the VM's kinds, flushes included.
type OutputKind = vm.OutputKind

const (
	OutputFrame     = vm.OutputFrame
	OutputDiskWrite = vm.OutputDiskWrite
	OutputDiskFlush = vm.OutputDiskFlush
	OutputConsole   = vm.OutputConsole
)

// Released describes one output as it left the primary; tests check the
// output rule with it.
type Released struct {
	Kind OutputKind
	// Produced is when the guest produced it; Released when it left.
	Produced, Released time.Time
	// Seq is the log entry it waited for; AckedThrough what the backup
	// had acknowledged when it was released (never below Seq).
	Seq, AckedThrough uint64
	// LogAtRelease is the last log entry the primary had appended when
	// it released: above Seq, the guest kept running while it was held.
	LogAtRelease uint64
	Bytes        int
	// Device, Offset and Data say what left (a NIC or disk index, a
	// disk offset, the bytes): a test can hash it as the log does and
	// find the entry that logged it. Data must not be modified.
	Device int
	Offset int64
	Data   []byte
}

// acks is the part of the log channel's sender the gate needs.
type acks interface {
	AckNotify(seq uint64) <-chan struct{}
	AckedThrough() uint64
	Done() <-chan struct{}
}

// logEnd, if the acks also tell the last appended entry, is used for
// Released.LogAtRelease.
type logEnd interface{ LastAppended() uint64 }

// output is one held output.
type output struct {
	kind     OutputKind
	disk     int
	off      int64
	data     []byte
	produced time.Time
}

type sealedGroup struct {
	seq     uint64
	outputs []output
}

// Gate holds a primary's outputs until the backup acknowledged the log
// entry of the exit that produced them. Add and Seal run on the vCPU
// goroutine; a releaser goroutine (Run) lets them out.
type Gate struct {
	acks    acks
	send    func(frame []byte)
	disks   []blockWriter
	console io.Writer
	onLeave func(Released)
	// onFail is told of the first failed release, once: the VM must stop.
	onFail func(error)
	// beforeDisk, if set, runs before each disk output is issued (a test
	// hook: fencing tests hold a released write back).
	beforeDisk func()

	mu     sync.Mutex
	open   []output      // produced since the last Seal
	sealed []sealedGroup // waiting for acks, oldest first
	wake   chan struct{}
	lost   bool // the log channel failed: nothing will be acked
	stats  GateStats
	// alone: the backup is gone and this primary won the arbiter: outputs
	// leave as soon as they are produced. aloneCh is closed then.
	alone   bool
	aloneCh chan struct{}
	// failed is the first release that failed (a disk error). Nothing
	// after it leaves: the guest was told that write was done, so every
	// later output may depend on data that is not on the disk.
	failed error
}

// blockWriter is where released disk outputs go.
type blockWriter interface {
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
}

// GateStats counts outputs.
type GateStats struct {
	HeldOutputs, HeldBytes int
	// Held by kind (they add up to HeldOutputs).
	HeldFrames, HeldWrites, HeldFlushes, HeldConsole int
	OldestHeld                                       time.Duration
	ReleasedFrames                                   uint64
	ReleasedWrites                                   uint64
	ReleasedFlushes                                  uint64
	ReleasedConsoleBytes                             uint64
	ReleasedBytes                                    uint64
	MaxHold, TotalHold                               time.Duration
	Paused                                           bool // the guest waits at an output: backup lost
	LastReleaseSeq, LastSeal                         uint64
}

func newGate(a acks, send func([]byte), onLeave func(Released)) *Gate {
	return &Gate{acks: a, send: send, onLeave: onLeave, wake: make(chan struct{}, 1), aloneCh: make(chan struct{})}
}

// add holds an output produced now. When the backup is lost, or a release
// failed, it waits (the guest pauses at this output) until ctx ends.
func (g *Gate) add(ctx context.Context, o output) {
	o.produced = time.Now()
	g.mu.Lock()
	g.open = append(g.open, o)
	g.pauseLocked(ctx)
}

// addConsole holds console bytes printed now. Bytes printed during one
// exit, or in a row with no other output between, share one output, so a
// line costs one held output rather than one per byte.
func (g *Gate) addConsole(ctx context.Context, p []byte) {
	g.mu.Lock()
	if n := len(g.open); n > 0 && g.open[n-1].kind == OutputConsole {
		g.open[n-1].data = append(g.open[n-1].data, p...)
	} else {
		g.open = append(g.open, output{kind: OutputConsole, data: append([]byte(nil), p...), produced: time.Now()})
	}
	g.pauseLocked(ctx)
}

// pauseLocked unlocks g.mu and, if nothing can be released now, waits with
// the output just added held (counted in Stats): after a failed release
// until ctx ends; with the backup lost until the primary goes on alone or
// ctx ends. The vCPU waits here.
func (g *Gate) pauseLocked(ctx context.Context) {
	failed := g.failed != nil
	stuck := g.lost && !g.alone || failed
	if stuck {
		g.stats.Paused = true
	}
	alone := g.alone && !failed
	if alone && len(g.open) > 0 {
		// No log to wait for: out as soon as the releaser gets to it.
		g.sealed = append(g.sealed, sealedGroup{outputs: g.open})
		g.open = nil
	}
	g.mu.Unlock()
	if alone {
		g.poke()
	}
	switch {
	case failed:
		<-ctx.Done()
	case stuck:
		// Until the primary wins the arbiter (goAlone releases this
		// output with the rest) or stops.
		select {
		case <-ctx.Done():
		case <-g.aloneCh:
		}
	}
}

// seal ties the outputs added since the last seal to log entry seq, which
// holds the log through the exit that produced them.
func (g *Gate) seal(seq uint64) {
	g.mu.Lock()
	if len(g.open) > 0 {
		g.sealed = append(g.sealed, sealedGroup{seq: seq, outputs: g.open})
		g.open = nil
		g.stats.LastSeal = seq
	}
	g.mu.Unlock()
	g.poke()
}

// run releases sealed outputs in order as their entries are acked, until
// ctx ends. If the log channel fails it marks the gate lost and keeps
// everything held.
func (g *Gate) run(ctx context.Context) {
	for {
		g.mu.Lock()
		var next *sealedGroup
		if len(g.sealed) > 0 {
			next = &g.sealed[0]
		}
		alone := g.alone
		g.mu.Unlock()
		if next == nil {
			var lost <-chan struct{}
			if !alone {
				lost = g.acks.Done()
			}
			select {
			case <-ctx.Done():
				return
			case <-lost:
				if !g.waitAlone(ctx) {
					return
				}
			case <-g.wake:
			}
			continue
		}
		if !alone {
			select {
			case <-ctx.Done():
				return
			case <-g.acks.Done():
				// A final ack may have landed just before the failure.
				if g.acks.AckedThrough() < next.seq && !g.waitAlone(ctx) {
					return
				}
			case <-g.acks.AckNotify(next.seq):
			case <-g.aloneCh:
			}
		}
		if !g.release(next.seq) {
			// A disk output failed: everything after it stays held.
			<-ctx.Done()
			return
		}
	}
}

// waitAlone marks the gate lost (nothing will be acked any more) and waits
// until the primary won the arbiter and goes on alone (true) or ctx ends.
func (g *Gate) waitAlone(ctx context.Context) bool {
	g.markLost()
	select {
	case <-ctx.Done():
		return false
	case <-g.aloneCh:
		return true
	}
}

// goAlone releases every held output, in order, without waiting for acks,
// and lets every later output out as soon as it is produced: the primary
// won the arbiter's record after losing its backup, so nobody else will
// produce these outputs, and holding them would only stall the guest.
func (g *Gate) goAlone() {
	g.mu.Lock()
	if g.alone {
		g.mu.Unlock()
		return
	}
	g.alone = true
	g.stats.Paused = false
	if len(g.open) > 0 {
		g.sealed = append(g.sealed, sealedGroup{outputs: g.open})
		g.open = nil
	}
	g.mu.Unlock()
	close(g.aloneCh)
	g.poke()
}

// lastReleased is the log entry through which every output has left.
func (g *Gate) lastReleased() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stats.LastReleaseSeq
}

func (g *Gate) isAlone() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.alone
}

func (g *Gate) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *Gate) markLost() {
	g.mu.Lock()
	g.lost = true
	g.mu.Unlock()
}

// release lets the oldest sealed group out, in order, and reports whether
// all of it left. At the first disk output that fails it stops: that output
// and everything after it stay held, and the gate fails. Held disk writes
// stay visible to reads until they are on the disk.
func (g *Gate) release(seq uint64) bool {
	g.mu.Lock()
	group := g.sealed[0]
	g.mu.Unlock()
	acked := g.acks.AckedThrough()
	var appended uint64
	if le, ok := g.acks.(logEnd); ok {
		appended = le.LastAppended()
	}
	for i := range group.outputs {
		o := &group.outputs[i]
		if err := g.emit(o); err != nil {
			g.mu.Lock()
			g.sealed[0].outputs = group.outputs[i:]
			g.mu.Unlock()
			g.fail(err)
			return false
		}
		now := time.Now()
		hold := now.Sub(o.produced)
		g.mu.Lock()
		switch o.kind {
		case OutputFrame:
			g.stats.ReleasedFrames++
		case OutputDiskWrite:
			g.stats.ReleasedWrites++
		case OutputDiskFlush:
			g.stats.ReleasedFlushes++
		case OutputConsole:
			g.stats.ReleasedConsoleBytes += uint64(len(o.data))
		}
		g.stats.ReleasedBytes += uint64(len(o.data))
		g.stats.TotalHold += hold
		g.stats.MaxHold = max(g.stats.MaxHold, hold)
		g.mu.Unlock()
		if g.onLeave != nil {
			g.onLeave(Released{Kind: o.kind, Produced: o.produced, Released: now, Seq: seq, AckedThrough: acked, LogAtRelease: appended,
				Bytes: len(o.data), Device: o.disk, Offset: o.off, Data: o.data})
		}
	}
	g.mu.Lock()
	g.sealed = g.sealed[1:]
	g.stats.LastReleaseSeq = seq
	g.mu.Unlock()
	return true
}

// emit lets one output out of the primary.
func (g *Gate) emit(o *output) error {
	switch o.kind {
	case OutputFrame:
		g.send(o.data)
	case OutputConsole:
		// A console that cannot be written (a closed terminal) loses
		// nothing the guest depends on: it is not a reason to stop.
		if g.console != nil {
			g.console.Write(o.data)
		}
	case OutputDiskWrite:
		if g.beforeDisk != nil {
			g.beforeDisk()
		}
		if _, err := g.disks[o.disk].WriteAt(o.data, o.off); err != nil {
			return fmt.Errorf("release a held write of %d bytes at %d to disk %d: %w", len(o.data), o.off, o.disk, err)
		}
	case OutputDiskFlush:
		if err := g.disks[o.disk].Flush(); err != nil {
			return fmt.Errorf("release a held flush of disk %d: %w", o.disk, err)
		}
	}
	return nil
}

func (g *Gate) fail(err error) {
	g.mu.Lock()
	first := g.failed == nil
	if first {
		g.failed = err
	}
	g.mu.Unlock()
	if first && g.onFail != nil {
		g.onFail(err)
	}
}

// Stats reports the gate's counters and what it holds now.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.stats
	now := time.Now()
	count := func(os []output) {
		for _, o := range os {
			st.HeldOutputs++
			switch o.kind {
			case OutputFrame:
				st.HeldFrames++
			case OutputDiskWrite:
				st.HeldWrites++
			case OutputDiskFlush:
				st.HeldFlushes++
			case OutputConsole:
				st.HeldConsole++
			}
			st.HeldBytes += len(o.data)
			st.OldestHeld = max(st.OldestHeld, now.Sub(o.produced))
		}
	}
	for _, s := range g.sealed {
		count(s.outputs)
	}
	count(g.open)
	return st
}

// Err is the first failed release (a disk error after the guest was told
// its write was done): the primary must stop.
func (g *Gate) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failed
}

// overlay copies into p (read at off from disk) every held write to that
// disk overlapping it, oldest first, so a read sees what the guest wrote.
// The caller has read the disk after taking the snapshot (see gatedDisk).
func overlay(p []byte, off int64, held []output) {
	end := off + int64(len(p))
	for _, o := range held {
		oEnd := o.off + int64(len(o.data))
		if o.kind != OutputDiskWrite || oEnd <= off || o.off >= end {
			continue
		}
		lo, hi := max(off, o.off), min(end, oEnd)
		copy(p[lo-off:hi-off], o.data[lo-o.off:hi-o.off])
	}
}

// heldWrites returns the writes to disk still held, oldest first.
func (g *Gate) heldWrites(disk int) []output {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []output
	for _, s := range g.sealed {
		for _, o := range s.outputs {
			if o.kind == OutputDiskWrite && o.disk == disk {
				out = append(out, o)
			}
		}
	}
	for _, o := range g.open {
		if o.kind == OutputDiskWrite && o.disk == disk {
			out = append(out, o)
		}
	}
	return out
}
