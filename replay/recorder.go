package replay

import (
	"bytes"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

// RecorderOptions tune a Recorder.
type RecorderOptions struct {
	// MarkEvery puts an ExitMark on every MarkEvery-th exit even without
	// other entries, so a backup of a guest that reads no inputs still
	// checks its path now and then. Default 64; 1 marks every exit.
	MarkEvery uint64
	// BatchBytes is the batch size at which the recorder hands a batch
	// on. Default 16 KiB.
	BatchBytes int
	// DigestEvery logs a StateDigest (registers and all of memory) every
	// DigestEvery exits; DigestInterval also after that much wall time
	// with at least one exit. 0 means the defaults (16384 exits, 1 s);
	// negative turns that trigger off.
	DigestEvery    int64
	DigestInterval time.Duration
	// OutputsLogged, if set, is called (with the recorder's lock held)
	// once the entries through the exit that produced outputs (see
	// NoteOutput) have been handed to emit: the output rule's cue.
	OutputsLogged func()
	// LazyOutputDelay bounds how long an output noted with NoteLazyOutput
	// (console bytes) waits before the log through its exit is handed on
	// and OutputsLogged called. Default 5 ms.
	LazyOutputDelay time.Duration
	// SyncInterval: BeforeRun reads the dirty log once this much wall
	// time has passed since the last sync point (such a read, or a
	// checkpoint), which makes that exit a new one: a point where the
	// recorder knows the backup's memory will equal the primary's when it
	// gets there. A checkpoint carries the content of only the pages
	// written since the last sync point and names the rest by hash, so
	// the more often, the fewer pages travel; but a read costs an ioctl
	// over the whole memory's bitmap and a write-protect fault for every
	// page written after it, so it is bounded by time, not done at every
	// exit. A state digest reads the dirty log too and is a sync point
	// whatever this says. Default DefaultSyncInterval; negative: only the
	// digests' reads.
	SyncInterval time.Duration
}

// RecorderStats counts what a Recorder logged.
type RecorderStats struct {
	Batches, Bytes uint64
	Digests        uint64
	Checkpoints    uint64 // resyncs after kicks
	CheckpointSize uint64 // bytes of the checkpoints' entries in the log
	// CheckpointRawSize is what the same checkpoints cost as log Version 1
	// shipped them (every page's content, uncompressed; zero pages named):
	// the before of CheckpointSize.
	CheckpointRawSize uint64
	// Checkpoint pages by how they travelled: content (compressed), hash
	// only (the backup holds them; it checks), or zero.
	CheckpointPagesSent, CheckpointPagesHashed, CheckpointPagesZero uint64
	// SyncReads counts the dirty-log reads BeforeRun made to mark sync
	// points (see RecorderOptions.SyncInterval); CheckpointsWithoutSync
	// the checkpoints with no such read since the previous checkpoint,
	// which carried every non-zero page's content.
	SyncReads, CheckpointsWithoutSync uint64
	// SyncReadTime is the time those reads took on the vCPU goroutine
	// (the guest waits for them).
	SyncReadTime   time.Duration
	LastDigestExit uint64
	Outputs        uint64 // frames and disk writes logged as hashes
	// KicksUser counts the checkpoints whose kick stopped the guest in
	// user mode (CPL 3); the rest of Checkpoints stopped it in the kernel
	// (KernelKickPoints says where).
	KicksUser uint64
}

// DefaultSyncInterval is RecorderOptions.SyncInterval's default. It was
// 20 ms until the write-protect faults after each read showed up as the
// biggest cost of a kv pair (BenchmarkPairCosts, nested host, the standard
// kv load on a pair from power-on, one run: at 20 ms the load took 112 s,
// at 200 ms 43 s, with the digests' reads only 37 s; the boot's and load's
// checkpoints, 10-13 of them, took 0.88, 1.17 and 2.05 MB of log).
const DefaultSyncInterval = 200 * time.Millisecond

// maxKickPoints bounds the distinct kernel RIPs KernelKickPoints keeps;
// kicks at further RIPs are counted under RIP 0.
const maxKickPoints = 4096

// Recorder implements vm.Recorder: it turns a primary's inputs into log
// batches, each decodable on its own, handed to emit (the log channel in a
// pair, a slice in tests). The vm.Recorder methods run on the vCPU
// goroutine; Flush may be called from any goroutine (a pair flushes on a
// timer so an idle primary's log still reaches the backup).
type Recorder struct {
	mu      sync.Mutex
	opts    RecorderOptions
	emit    func(batch []byte) error
	enc     Encoder
	buf     []byte
	pending []Event // read during exit n's handler, before Exit(n)
	cur     uint64  // the last exit Exit was called for
	kind    uint8
	curRIP  uint64
	marked  bool // cur's ExitMark is in the log
	err     error

	outputs bool // an output was produced since the last BeforeRun
	// lazySince is when the oldest output noted with NoteLazyOutput and
	// not yet handed on was produced (zero: none).
	lazySince  time.Time
	state      stateTracker
	lastDigest uint64
	digestAt   time.Time
	stats      RecorderStats

	// syncAt is when the last sync point was: a BeforeRun that read the
	// dirty log, or a checkpoint (the backup holds its state once it has
	// loaded it). The backup replays the same exits, so when it gets to
	// the kicked exit it holds every page the primary did not write since
	// then, which state.sinceSync lists. readSinceCkpt: a BeforeRun read
	// since the last checkpoint.
	syncAt        time.Time
	readSinceCkpt bool
	chunks        chunkWriter
	zeroPage      []byte
	chunkSize     uint64 // log bytes of the current checkpoint's chunks
	// kernelKicks counts kicks by the kernel RIP they stopped at, to tell
	// where kicks come from (a measurement; see KernelKickPoints).
	kernelKicks map[uint64]uint64
}

var _ vm.Recorder = (*Recorder)(nil)

// NewRecorder returns a recorder handing batches to emit. emit owns the
// batch it is given; an error from it stops the recording (Err).
func NewRecorder(emit func(batch []byte) error, opts RecorderOptions) *Recorder {
	if opts.MarkEvery == 0 {
		opts.MarkEvery = 64
	}
	if opts.BatchBytes == 0 {
		opts.BatchBytes = 16 << 10
	}
	if opts.DigestEvery == 0 {
		opts.DigestEvery = 16384
	}
	if opts.DigestInterval == 0 {
		opts.DigestInterval = time.Second
	}
	if opts.LazyOutputDelay == 0 {
		opts.LazyOutputDelay = 5 * time.Millisecond
	}
	if opts.SyncInterval == 0 {
		opts.SyncInterval = DefaultSyncInterval
	}
	r := &Recorder{opts: opts, emit: emit, digestAt: time.Now(), zeroPage: make([]byte, PageSize)}
	r.begin()
	return r
}

func (r *Recorder) begin() {
	r.buf = make([]byte, 0, r.opts.BatchBytes+1024)
	r.enc.Begin(r.buf)
}

// Err is the first encoding or emit error; a recorder with an error stops
// logging, and its pair must resynchronise.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Stats reports what was logged so far.
func (r *Recorder) Stats() RecorderStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func (r *Recorder) append(ev Event) {
	if r.err != nil {
		return
	}
	if err := r.enc.Append(&ev); err != nil {
		r.err = fmt.Errorf("record %v at exit #%d: %w", ev.Type, ev.Exit, err)
		return
	}
	if r.enc.Len() >= r.opts.BatchBytes {
		r.flushLocked()
	}
}

// mark puts the current exit's ExitMark into the log once, before the
// first other entry at that exit.
func (r *Recorder) mark() {
	if !r.marked && r.cur > 0 {
		r.marked = true
		r.append(NewExitMark(r.cur, r.kind, r.curRIP))
	}
}

// StartAt tells a recorder that starts on a running or restored VM the exit
// it starts at (vm.VM.StartRecording and LoadState call it): inputs the
// VM applies after that exit and before its next belong to it, as they
// would after an Exit(n) the recorder had seen. No mark is logged for n:
// the backup starts there from the same state without running that exit.
func (r *Recorder) StartAt(n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur, r.marked = n, true
}

// Exit implements vm.Recorder.
func (r *Recorder) Exit(n uint64, kind kvm.ExitKind, _ uint64, rip func() uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// RIP now, while it is the exit's: a kick or a completed port I/O
	// (reading the vCPU state) moves it before a lazy mark would look.
	r.cur, r.kind, r.curRIP, r.marked = n, uint8(kind), rip(), false
	if len(r.pending) > 0 || n%r.opts.MarkEvery == 0 {
		r.mark()
	}
	for _, ev := range r.pending {
		r.append(ev)
	}
	r.pending = r.pending[:0]
}

// during logs ev, read while exit n was being handled: before Exit(n) it
// waits for the exit's mark.
func (r *Recorder) during(n uint64, ev Event) {
	if n != r.cur {
		if ev.Data != nil {
			ev.Data = append([]byte(nil), ev.Data...) // valid only during the call
		}
		r.pending = append(r.pending, ev)
		return
	}
	r.mark()
	r.append(ev)
}

// ClockRead implements vm.Recorder.
func (r *Recorder) ClockRead(n uint64, v time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.during(n, NewClockRead(n, int64(v)))
}

// DiskRead implements vm.Recorder: the data, in MaxDiskRead pieces.
func (r *Recorder) DiskRead(n uint64, dev int, off int64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(data) > 0 {
		k := min(len(data), diskReadPiece)
		r.during(n, NewDiskRead(n, uint8(dev), off, data[:k]))
		data, off = data[k:], off+int64(k)
	}
}

// DiskReadFailed implements vm.Recorder.
func (r *Recorder) DiskReadFailed(n uint64, dev int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.during(n, NewDiskDone(n, uint8(dev), 1 /* VIRTIO_BLK_S_IOERR */))
}

// FrameReceived implements vm.Recorder. Frames can arrive while an exit is
// handled (the guest refilled its receive queue) or after it.
func (r *Recorder) FrameReceived(n uint64, dev int, frame []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.during(n, NewFrameReceived(n, uint8(dev), frame))
}

// ConsoleInput implements vm.Recorder.
func (r *Recorder) ConsoleInput(n uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(data) > 0 {
		k := min(len(data), MaxConsoleInput)
		r.during(n, NewConsoleInput(n, data[:k]))
		data = data[k:]
	}
}

// TimerFired implements vm.Recorder.
func (r *Recorder) TimerFired(n uint64, timer int, now time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mark()
	r.append(NewTimerFired(n, uint8(timer), int64(now)))
}

// Injected implements vm.Recorder.
func (r *Recorder) Injected(n uint64, vector uint8) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mark()
	r.append(NewInterruptInjected(n, vector))
}

// Output implements vm.Recorder: the output's hash, for the backup to
// compare with its own.
func (r *Recorder) Output(n uint64, kind vm.OutputKind, dev int, off int64, data []byte) {
	k := uint8(kind) // the log numbers kinds as vm does (TestOutputKindsMatchVM)
	h := OutputHash(k, uint8(dev), off, data)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Outputs++
	r.during(n, NewOutput(n, k, uint8(dev), h))
}

// NoteOutput says the exit being handled produced an output (a frame, a
// disk write) held under the output rule: the next BeforeRun hands the log
// through this exit on at once and calls OutputsLogged. vCPU goroutine.
func (r *Recorder) NoteOutput() {
	r.mu.Lock()
	r.outputs = true
	r.mu.Unlock()
}

// NoteLazyOutput says the exit being handled produced an output that may
// wait a little (console bytes: one exit per byte, and flushing the log at
// each would cost a batch per byte): the first BeforeRun at least
// LazyOutputDelay after it hands the log on and calls OutputsLogged, and so
// does any earlier one that flushes for a NoteOutput. vCPU goroutine.
func (r *Recorder) NoteLazyOutput() {
	r.mu.Lock()
	if r.lazySince.IsZero() {
		r.lazySince = time.Now()
	}
	r.mu.Unlock()
}

// BeforeRun implements vm.Recorder: a StateDigest when one is due, and the
// flush the output rule waits for.
func (r *Recorder) BeforeRun(n uint64, g vm.GuestState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	due := r.digestDue(n)
	if !r.lazySince.IsZero() && time.Since(r.lazySince) >= r.opts.LazyOutputDelay {
		r.outputs = true
	}
	if due || r.outputs {
		// Mark first: reading the vCPU state completes a pending port
		// I/O, which moves RIP past the instruction the mark names.
		r.mark()
	}
	if iv := r.opts.SyncInterval; iv > 0 && !due && time.Since(r.syncAt) >= iv {
		// (A due digest reads the dirty log itself, below.)
		start := time.Now()
		if err := r.state.collect(g); err != nil {
			r.err = fmt.Errorf("mark a sync point at exit #%d: %w", n, err)
			return r.err
		}
		clear(r.state.sinceSync)
		r.syncAt, r.readSinceCkpt = start, true
		r.stats.SyncReads++
		r.stats.SyncReadTime += time.Since(start)
	}
	if due {
		regs, mem, err := r.state.digest(g)
		if err != nil {
			r.err = fmt.Errorf("state digest at exit #%d: %w", n, err)
			return r.err
		}
		r.append(NewStateDigest(n, regs, mem))
		r.lastDigest, r.digestAt = n, time.Now()
		// The digest read the dirty log here: a sync point for free.
		clear(r.state.sinceSync)
		r.syncAt, r.readSinceCkpt = r.digestAt, true
		r.stats.Digests++
		r.stats.LastDigestExit = n
	}
	if r.outputs {
		r.outputs, r.lazySince = false, time.Time{}
		r.flushLocked()
		if r.err == nil && r.opts.OutputsLogged != nil {
			r.opts.OutputsLogged()
		}
	}
	return r.err
}

func (r *Recorder) digestDue(n uint64) bool {
	if n == 0 || n == r.lastDigest {
		return false
	}
	if e := r.opts.DigestEvery; e > 0 && n-r.lastDigest >= uint64(e) {
		return true
	}
	d := r.opts.DigestInterval
	return d > 0 && time.Since(r.digestAt) >= d
}

// Kicked implements vm.Recorder: the watchdog stopped the guest at a point
// the backup cannot find, so the log carries a checkpoint from here: the
// Kick, the vCPU state, and every page written since the last checkpoint,
// in page chunks. A page written since the last sync point travels with its
// content (compressed); one written only before it is named by its hash,
// since the backup, replaying to this exit, computed the same bytes (and
// checks that it did); a zero page is named as such.
func (r *Recorder) Kicked(n uint64, g vm.GuestState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.mark()
	r.append(NewKick(n))
	if err := r.state.collect(g); err != nil {
		r.err = fmt.Errorf("checkpoint at exit #%d: %w", n, err)
		return r.err
	}
	if err := g.CaptureCPU(&r.state.cpu); err != nil {
		r.err = fmt.Errorf("checkpoint at exit #%d: read vCPU state: %w", n, err)
		return r.err
	}
	cpu, err := r.state.cpu.MarshalBinary()
	if err != nil {
		r.err = fmt.Errorf("checkpoint at exit #%d: encode vCPU state: %w", n, err)
		return r.err
	}
	r.append(NewCheckpointCPU(n, cpu))
	r.countKickPoint(&r.state.cpu)
	if !r.readSinceCkpt {
		r.stats.CheckpointsWithoutSync++
	}
	r.chunkSize = 0
	raw := uint64(len(cpu))
	mem := g.Memory()
	r.chunks.reset()
	for w, word := range r.state.ckptDirty {
		for ; word != 0; word &= word - 1 {
			p := w*64 + trailingZeros(word)
			addr := int64(p) * PageSize
			page := mem[addr : addr+PageSize]
			rec, content := ChunkPage{Page: uint64(p)}, []byte(nil)
			switch {
			case bytes.Equal(page, r.zeroPage):
				rec.Kind = PageZero
				r.stats.CheckpointPagesZero++
				raw += 4
			case r.state.sinceSync[w]&(1<<(p%64)) != 0:
				rec.Kind, content = PageContent, page
				r.stats.CheckpointPagesSent++
				raw += PageSize + 4
			default:
				rec.Kind, rec.Hash = PageHashed, HashPage(page)
				r.stats.CheckpointPagesHashed++
				raw += PageSize + 4
			}
			if err := r.chunks.add(rec, content); err != nil {
				r.err = fmt.Errorf("checkpoint at exit #%d: %w", n, err)
				return r.err
			}
			if r.chunks.len() == MaxChunkPages {
				r.appendChunk(n)
			}
		}
		r.state.ckptDirty[w] = 0
	}
	if r.chunks.len() > 0 {
		r.appendChunk(n)
	}
	// The backup holds this state once it has loaded the checkpoint.
	clear(r.state.sinceSync)
	r.syncAt, r.readSinceCkpt = time.Now(), false
	r.stats.Checkpoints++
	r.stats.CheckpointSize += uint64(len(cpu)) + 4 + r.chunkSize
	r.stats.CheckpointRawSize += raw
	r.flushLocked() // the backup is stopped until it has all of it
	return r.err
}

// countKickPoint notes where a kick stopped the guest: user mode, or the
// kernel RIP. The CPL is SS.DPL in protected mode (both VMX and SVM keep
// it there); real mode runs at CPL 0.
func (r *Recorder) countKickPoint(c *vm.CPUState) {
	if c.Sregs.CR0&1 != 0 && c.Sregs.SS.DPL == 3 {
		r.stats.KicksUser++
		return
	}
	if r.kernelKicks == nil {
		r.kernelKicks = make(map[uint64]uint64)
	}
	rip := c.Regs.RIP
	if _, ok := r.kernelKicks[rip]; !ok && len(r.kernelKicks) >= maxKickPoints {
		rip = 0
	}
	r.kernelKicks[rip]++
}

// KernelKickPoints returns how many kicks stopped the guest at each kernel
// RIP (RIP 0: at one of the RIPs past the first maxKickPoints distinct).
// With the kernel's symbol table it says which kernel code runs long
// without exits.
func (r *Recorder) KernelKickPoints() map[uint64]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.kernelKicks)
}

// appendChunk encodes the chunk built so far into the log and starts the
// next one.
func (r *Recorder) appendChunk(n uint64) {
	b, err := r.chunks.encode()
	if err != nil {
		if r.err == nil {
			r.err = fmt.Errorf("checkpoint at exit #%d: %w", n, err)
		}
		return
	}
	r.chunkSize += uint64(len(b)) + 5 // type, exit delta, length
	r.append(NewCheckpointChunk(n, b))
	r.chunks.reset()
}

// Flush hands on the batch built so far, if any.
func (r *Recorder) Flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushLocked()
}

func (r *Recorder) flushLocked() {
	if r.err != nil || r.enc.Len() <= 1 { // only the version byte
		return
	}
	b := r.enc.Bytes()
	r.stats.Batches++
	r.stats.Bytes += uint64(len(b))
	if err := r.emit(b); err != nil {
		r.err = fmt.Errorf("hand the log on: %w", err)
	}
	r.begin()
}

// Close marks the last exit, so a backup can tell it replayed everything,
// and flushes. Call it after the VM stopped and before it is closed: the
// mark may need the vCPU's RIP.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mark()
	r.flushLocked()
	return r.err
}

// diskReadPiece is the most read data per DiskRead entry the recorder
// writes: well under the log channel's 1 MiB entry bound with the rest of
// a batch around it.
const diskReadPiece = 64 << 10
