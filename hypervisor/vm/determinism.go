package vm

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// Exit numbers: the loop counts the synchronous exits, those the guest
// itself caused (port and MMIO I/O, HLT, interrupt-window-open, debug). An
// exit caused by a kick or a signal is not counted. Every non-deterministic
// input is tied to the number of the synchronous exit at which the guest
// observed it, so a backup that replays the inputs at the same numbers
// executes the same instructions (DESIGN.md, "The determinism contract").
// exitWhere is the port or address an exit concerns, for divergence checks.
func exitWhere(e *kvm.Exit) uint64 {
	switch e.Kind {
	case kvm.ExitIO:
		return uint64(e.IO.Port)
	case kvm.ExitMMIO:
		return e.MMIO.Addr
	}
	return 0
}

func synchronousExit(k kvm.ExitKind) bool {
	switch k {
	case kvm.ExitIO, kvm.ExitMMIO, kvm.ExitHLT, kvm.ExitIRQWindowOpen, kvm.ExitDebug:
		return true
	}
	return false
}

// GuestState is what the replication layer may read and change of a VM
// between exits, on the vCPU goroutine: the vCPU state, guest memory and
// the pages written since it last asked. *VM implements it. The recorder
// uses it for state digests and to ship a checkpoint after a kick; the
// replayer for digests and to load that checkpoint.
type GuestState interface {
	CaptureCPU(*CPUState) error
	RestoreCPU(*CPUState) error
	Memory() []byte
	// WrittenPages returns, as a bitmap (bit i of word i/64 is page i),
	// every page written since the previous call: by the guest (KVM's
	// dirty log) and by the VMM's devices (virtio DMA).
	WrittenPages(into []uint64) ([]uint64, error)
}

// WrittenPages implements GuestState: DirtyPages plus the pages the virtio
// devices wrote, which KVM's log does not see. It needs replication on
// (Config.Record or Replay), which turns both logs on from power-on.
func (v *VM) WrittenPages(into []uint64) ([]uint64, error) {
	bm, err := v.DirtyPages(into)
	if err != nil {
		return nil, err
	}
	if v.dma != nil {
		v.dma.TakeDirty(bm)
	}
	return bm, nil
}

// Recorder is told, on the primary, every non-deterministic input at the
// exit where it happened. Package replay implements it (encoding events for
// the log channel); hypervisor does not import replay. All methods run on
// the vCPU goroutine.
type Recorder interface {
	// Exit is called after synchronous exit n was handled, before any
	// timer expiry or injection at n. where is the port of a port I/O exit
	// or the address of an MMIO exit (0 otherwise): with the kind, enough
	// to see the backup take another path at the first exit where it does.
	// rip reads the guest's RIP (a KVM_GET_REGS): call it only for exits
	// that are logged with it. At an I/O exit RIP still points at the I/O
	// instruction, the same on both sides.
	Exit(n uint64, kind kvm.ExitKind, where uint64, rip func() uint64)
	// ClockRead is a device's read of the guest clock during exit n.
	ClockRead(n uint64, value time.Duration)
	// DiskRead is the data block device dev read at byte offset off while
	// handling exit n; data is only valid during the call. A failed read
	// is reported with DiskReadFailed instead.
	DiskRead(n uint64, dev int, off int64, data []byte)
	DiskReadFailed(n uint64, dev int)
	// TimerFired: timer (an index in the machine's timer list) expired
	// at exit n with the given now.
	TimerFired(n uint64, timer int, now time.Duration)
	// ConsoleInput: the UART accepted data after exit n.
	ConsoleInput(n uint64, data []byte)
	// FrameReceived: network device dev accepted frame after exit n.
	FrameReceived(n uint64, dev int, frame []byte)
	// Injected: the vCPU got interrupt vector after exit n.
	Injected(n uint64, vector uint8)
	// Kicked: the watchdog stopped the guest after exit n at a point no
	// backup can reproduce. The recorder ships the guest's state (a
	// checkpoint from g) so the backup can continue from here; an error
	// stops the primary.
	Kicked(n uint64, g GuestState) error
	// BeforeRun is called before every KVM_RUN, once exit n's inputs are
	// in and before the interrupt injection: the place for periodic state
	// digests and for handing the log on.
	BeforeRun(n uint64, g GuestState) error
	// Output: device dev produced an output while exit n was handled (a
	// frame sent, or data written at byte offset off); data is only valid
	// during the call. Logged as a hash the backup compares with its own.
	Output(n uint64, kind OutputKind, dev int, off int64, data []byte)
}

// OutputKind says what a device produced.
type OutputKind uint8

const (
	// OutputFrame: the NIC sent a frame.
	OutputFrame OutputKind = iota + 1
	// OutputDiskWrite: a block device wrote data.
	OutputDiskWrite
	// OutputDiskFlush: a block device made its writes durable. A primary
	// holds flushes under the output rule too; they carry no data to hash.
	OutputDiskFlush
	// OutputConsole: the serial console printed bytes. A primary holds
	// them like frames (a console reaches people and log collectors); they
	// are not hashed into the log.
	OutputConsole
)

func (k OutputKind) String() string {
	switch k {
	case OutputFrame:
		return "frame"
	case OutputDiskWrite:
		return "disk write"
	case OutputDiskFlush:
		return "disk flush"
	case OutputConsole:
		return "console bytes"
	}
	return fmt.Sprintf("output kind %d", uint8(k))
}

// InputKind says what a replayed input is.
type InputKind int

const (
	// InputTimer: Timer expired with Now.
	InputTimer InputKind = iota + 1
	// InputConsole: Data arrived at the UART.
	InputConsole
	// InputFrame: network device Device received Data.
	InputFrame
)

// Input is one input a Replayer hands the loop to apply.
type Input struct {
	Kind   InputKind
	Timer  int
	Now    time.Duration
	Device int
	Data   []byte
}

// Replayer serves a recording back on a backup. Its methods return an error
// when the log disagrees with what the backup does: divergence. All methods
// run on the vCPU goroutine.
type Replayer interface {
	// Exit checks synchronous exit n against the log. A replayer whose log
	// ends before n returns ErrLogEnd.
	Exit(n uint64, kind kvm.ExitKind, where uint64, rip func() uint64) error
	// ClockRead returns the value the primary's device read during exit n.
	ClockRead(n uint64) (time.Duration, error)
	// DiskRead fills p with what the primary's block device dev read at
	// offset off during exit n, or returns the error the primary got.
	DiskRead(n uint64, dev int, off int64, p []byte) error
	// Next returns the next input the primary applied after exit n, in
	// log order. Checks (state digests) and checkpoints (after a kick)
	// logged at n it carries out itself on g as it meets them. ok is
	// false when nothing more is logged at n before the next injection
	// or the next exit.
	Next(n uint64, g GuestState) (in Input, ok bool, err error)
	// Injected checks an injection after exit n against the log.
	Injected(n uint64, vector uint8) error
	// MoreAt reports whether the log still holds entries at exit n (it
	// waits until it knows): after the injection, a kick's checkpoint.
	MoreAt(n uint64) (bool, error)
	// Output checks an output the backup's device dev produced while exit
	// n was handled against the one the primary's produced there. The
	// backup's outputs go nowhere; this is only a check.
	Output(n uint64, kind OutputKind, dev int, off int64, data []byte) error
	// Drained reports whether every entry of the log was consumed and
	// the log has ended. Call it only once Config.LogEnded is closed (it
	// may wait for the log otherwise).
	Drained() bool
}

// ErrLogEnd is returned by a Replayer whose log ends: the backup has
// replayed everything the primary sent.
var ErrLogEnd = errors.New("end of the replay log")

// DivergenceError stops a backup that does not do what the primary did.
type DivergenceError struct {
	Exit uint64
	Err  error
}

func (e *DivergenceError) Error() string {
	return fmt.Sprintf("backup diverged from the primary at exit #%d: %v", e.Exit, e.Err)
}

func (e *DivergenceError) Unwrap() error { return e.Err }

// modalClock is the devices' clock in whatever mode the VM is in at the
// read: on a backup the primary's values from the log; live, the VM's
// clock; on a primary the same, each read reported to the recorder. A VM
// changes mode between exits (a backup goes live, a live VM starts
// recording for a new backup), so the mode is looked up at every read.
type modalClock struct {
	l *loop
}

func (c *modalClock) Now() time.Duration {
	l := c.l
	if l.rep == nil {
		v := l.clock.Now()
		if l.rec != nil {
			l.rec.ClockRead(l.syncExits, v)
		}
		return v
	}
	v, err := l.rep.ClockRead(l.syncExits)
	if errors.Is(err, ErrLogEnd) {
		if err = l.tryGoLive(); err == nil {
			return l.clock.Now()
		}
	}
	if err != nil {
		if l.replayErr == nil {
			l.replayErr = err
		}
		return l.lastReplayedClock // never backwards, even on the way out
	}
	l.lastReplayedClock = v
	return v
}

// replayInputs applies, in log order, what the primary applied after exit
// n: timer expiries, console bytes, received frames (the replayer itself
// checks digests and loads checkpoints it meets on the way). It stops
// before the exit's injection or at the next exit's entries.
func (l *loop) replayInputs() error {
	n := l.syncExits
	for {
		in, ok, err := l.rep.Next(n, l.guest)
		if err != nil || !ok {
			return err
		}
		switch in.Kind {
		case InputTimer:
			if in.Timer < 0 || in.Timer >= len(l.timers) {
				return fmt.Errorf("log names timer %d, this machine has %d", in.Timer, len(l.timers))
			}
			l.timers[in.Timer].Expire(in.Now)
		case InputConsole:
			if l.console == nil {
				return errors.New("log has console input, this machine has no console")
			}
			if got := l.console.Receive(in.Data); got != len(in.Data) {
				return fmt.Errorf("the UART took %d of the %d console bytes the primary's took", got, len(in.Data))
			}
		case InputFrame:
			if l.frames == nil || in.Device != 0 {
				return fmt.Errorf("log has a frame for network device %d, this machine has none", in.Device)
			}
			if !l.frames.dev.Receive(in.Data) {
				return errors.New("the network device had no receive buffer for a frame the primary's took")
			}
		default:
			return fmt.Errorf("replayer returned unknown input kind %d", in.Kind)
		}
	}
}

// modalDisk is a block backend in whatever mode the VM is in at the
// request (see modalClock). Recording, reads are logged with their data, so
// the backup never reads the disk (the primary may have written it since),
// and writes go on to the backend, which holds them under the output rule.
// Replaying, reads come from the log and writes are checked against the
// primary's and handed to the backend, which keeps them aside until the VM
// goes live (a backup does not write its disks); flushes are dropped. Live,
// everything goes to the backend.
type modalDisk struct {
	virtio.BlockBackend
	l   *loop
	dev int
}

func (d *modalDisk) ReadAt(p []byte, off int64) (int, error) {
	l := d.l
	if l.rep != nil {
		return d.replayRead(p, off)
	}
	n, err := d.BlockBackend.ReadAt(p, off)
	if l.rec == nil {
		return n, err
	}
	if err == nil && n < len(p) {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	if err != nil {
		l.rec.DiskReadFailed(l.syncExits, d.dev)
		return n, err
	}
	l.rec.DiskRead(l.syncExits, d.dev, off, p)
	return n, nil
}

func (d *modalDisk) replayRead(p []byte, off int64) (int, error) {
	l := d.l
	err := l.rep.DiskRead(l.syncExits, d.dev, off, p)
	if errors.Is(err, ErrLogEnd) {
		if err = l.tryGoLive(); err == nil {
			return d.BlockBackend.ReadAt(p, off)
		}
	}
	if err != nil {
		if l.replayErr == nil && !errors.Is(err, ErrPrimaryReadFailed) {
			l.replayErr = err
		}
		return 0, err
	}
	return len(p), nil
}

func (d *modalDisk) WriteAt(p []byte, off int64) (int, error) {
	l := d.l
	if l.rep != nil {
		l.checkOutput(OutputDiskWrite, d.dev, off, p)
		return d.BlockBackend.WriteAt(p, off)
	}
	n, err := d.BlockBackend.WriteAt(p, off)
	if err == nil && l.rec != nil {
		l.rec.Output(l.syncExits, OutputDiskWrite, d.dev, off, p)
	}
	return n, err
}

// Flush reaches the disk only outside replay.
func (d *modalDisk) Flush() error {
	if d.l.rep != nil {
		return nil
	}
	return d.BlockBackend.Flush()
}

// checkOutput compares an output the backup produced with the primary's;
// a difference is parked in replayErr and stops the backup at the end of
// the exit (the device cannot be handed an error). Where the log ends the
// VM may go live, and the output is then a live one.
func (l *loop) checkOutput(kind OutputKind, dev int, off int64, data []byte) {
	if l.rep == nil {
		return
	}
	err := l.rep.Output(l.syncExits, kind, dev, off, data)
	if errors.Is(err, ErrLogEnd) {
		err = l.tryGoLive()
	}
	if err != nil && l.replayErr == nil {
		l.replayErr = err
	}
}

// ErrPrimaryReadFailed is what a Replayer's DiskRead returns (wrapped or
// not) where the primary's read failed: the backup fails the request the
// same way, which is not a divergence.
var ErrPrimaryReadFailed = errors.New("the primary's disk read failed here")

// currentRIP reads the vCPU's RIP for Recorder.Exit and Replayer.Exit:
// from kvm_run when KVM syncs registers there (no ioctl), else with
// KVM_GET_REGS.
func (l *loop) currentRIP() uint64 {
	if l.syncRegs {
		return l.vcpu.SyncedRIP()
	}
	if err := l.vcpu.GetRegs(&l.regs); err != nil {
		return ^uint64(0) // never equal to a real RIP on the other side
	}
	return l.regs.RIP
}
