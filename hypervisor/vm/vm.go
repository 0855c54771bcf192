package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// Config describes one VM.
type Config struct {
	// MemoryMiB is the guest's RAM. Default 256.
	MemoryMiB int

	// A Linux guest: Kernel is a vmlinux (booted through its PVH entry) or
	// a bzImage (64-bit boot protocol).
	Kernel  string
	Initrd  string
	Cmdline string

	// RawCode, instead of a kernel, is a flat 16-bit real-mode program
	// loaded at RawLoadAddress and started there with CS=DS=SS=0 and
	// SP=RawStackTop: the tiny hand-made guests of the tests.
	RawCode []byte

	// Console receives the guest's serial output; ConsoleInput, if set,
	// is read and typed into the serial port.
	Console      io.Writer
	ConsoleInput io.Reader

	// Net, if set, gives the guest a virtio-net device (eth0).
	Net *NetConfig
	// Disks become virtio-blk devices vda, vdb, ... in order.
	Disks []DiskConfig

	// Record, on a primary, receives every non-deterministic input at the
	// exit where the guest observed it. Replay, on a backup, serves a
	// recording instead of the world: console input and received frames
	// come from the log (so a backup has no ConsoleInput or Net.Received),
	// disk reads too, and its disk writes are dropped. At most one may be
	// set. Either turns interrupt-window exits off (see loop.noWindows).
	Record Recorder
	Replay Replayer
	// Replicable makes a VM that neither records nor replays ready to start
	// recording later, for a backup made while it runs (StartRecording):
	// its dirty-page logs and register sync are on from power-on, as with
	// Record or Replay. The guest runs a little slower for the dirty log.
	Replicable bool
	// RecordingKickAfter is how long the guest of a recording VM may run
	// without an exit while a timer is overdue before the watchdog kicks
	// it. Each such kick ships a checkpoint to the backup, so recording
	// allows longer than a VM alone (LiveKickAfter), whose kick costs only
	// a signal; the price is a timer interrupt that late for a guest
	// computing without exits. Default DefaultRecordingKickAfter.
	RecordingKickAfter time.Duration
	// GoLive, with Replay, is asked where the log ends whether this backup
	// goes live there (golive.go). Without it a backup stops at the end.
	GoLive GoLiveFunc
	// LogEnded, with Replay, is closed once the log will grow no more
	// (the primary closed it or was lost). A guest the backup runs past
	// the log's last exit may spin without exits (the primary stopped it
	// mid-loop); the loop then interrupts it, and goes live or stops.
	LogEnded <-chan struct{}

	// Clock is the guest's time (default: a LiveClock started at Run).
	Clock devices.Clock
	// WallTime is what the guest's RTC reads at power-on. Default: now.
	WallTime time.Time

	// KVMDevice is the KVM device node. Default /dev/kvm.
	KVMDevice string
}

// Tiny real-mode guests: where they are loaded and where their stack starts.
const (
	RawLoadAddress = 0x1000
	RawStackTop    = 0x8000
)

// maxMemoryMiB keeps guest RAM below the 32-bit MMIO hole (3 GiB up), where
// devices will live; larger guests need a second memory slot above 4 GiB.
const maxMemoryMiB = 3072

// CheckMemory says whether a guest can have mib MiB of RAM (0: the default).
func CheckMemory(mib int) error {
	if mib != 0 && (mib < 16 || mib > maxMemoryMiB) {
		return fmt.Errorf("memory %d MiB: must be between 16 and %d MiB", mib, maxMemoryMiB)
	}
	return nil
}

// VM is one virtual machine with a single vCPU.
type VM struct {
	cfg     Config
	sys     *kvm.System
	kvmVM   *kvm.VM
	vcpu    *kvm.VCPU
	mem     *kvm.Memory
	console *consoleTail
	loop    *loop
	closed  bool
	// dma is guest RAM as the virtio devices see it; it tracks the pages
	// they write when replicating.
	dma *virtio.Memory
	// virtioParams tell Linux where the virtio-mmio devices are.
	virtioParams string
	// models are the device models, for saving and loading their state.
	models machineModels
	// ownClock is the clock New made when Config.Clock was nil; a
	// restore sets it to the snapshot's guest time.
	ownClock *LiveClock
}

// New creates the VM, loads the guest and wires its devices. It does not
// run it.
func New(cfg Config) (_ *VM, err error) {
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 256
	}
	if err := CheckMemory(cfg.MemoryMiB); err != nil {
		return nil, err
	}
	if (cfg.Kernel == "") == (cfg.RawCode == nil) {
		return nil, errors.New("VM config: give exactly one of a kernel or raw code")
	}
	if cfg.Record != nil && cfg.Replay != nil {
		return nil, errors.New("VM config: a VM records or replays, not both")
	}
	if cfg.Replay != nil && (cfg.ConsoleInput != nil || cfg.Net != nil && cfg.Net.Received != nil) {
		return nil, errors.New("VM config: a backup takes console input and received frames from the log, not from the world")
	}
	if cfg.WallTime.IsZero() {
		cfg.WallTime = time.Now()
	}
	v := &VM{cfg: cfg, console: newConsoleTail(cfg.Console, 16<<10)}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if v.sys, err = kvm.Open(cfg.KVMDevice); err != nil {
		return nil, err
	}
	if v.kvmVM, err = v.sys.CreateVM(); err != nil {
		return nil, err
	}
	// Intel's VMX needs three pages for a real-mode TSS somewhere in the
	// guest-physical space; put them just below 4 GiB, out of RAM's way.
	if err = v.kvmVM.SetTSSAddr(0xfffbd000); err != nil {
		return nil, err
	}
	if v.mem, err = kvm.AllocateMemory(cfg.MemoryMiB << 20); err != nil {
		return nil, err
	}
	if err = v.kvmVM.SetUserMemoryRegion(0, 0, v.mem.Bytes(), 0); err != nil {
		return nil, err
	}
	if v.vcpu, err = v.kvmVM.CreateVCPU(0); err != nil {
		return nil, err
	}
	syncRegs := false
	if v.replicable() {
		// Digests and checkpoints follow every page written from here
		// on; both sides start from the same memory.
		if err = v.EnableDirtyLog(); err != nil {
			return nil, err
		}
		// The log names the RIP of every marked exit; read it for free.
		if err = v.vcpu.EnableSyncRegs(v.sys); err != nil {
			return nil, err
		}
		syncRegs = true
	}
	clock := cfg.Clock
	if clock == nil {
		v.ownClock = NewLiveClock()
		clock = v.ownClock
	}
	v.loop = &loop{vcpu: v.vcpu, clock: clock, rec: cfg.Record, rep: cfg.Replay, guest: v, goLive: cfg.GoLive, logEnded: cfg.LogEnded,
		noWindows: cfg.Record != nil || cfg.Replay != nil, syncRegs: syncRegs, recordingKickAfter: cfg.RecordingKickAfter}
	if v.loop.recordingKickAfter <= 0 {
		v.loop.recordingKickAfter = DefaultRecordingKickAfter
	}
	v.loop.setKickAfter()
	if err = v.wireDevices(&modalClock{l: v.loop}); err != nil {
		return nil, err
	}
	if cfg.ConsoleInput != nil {
		v.loop.input = newInputQueue()
	}
	if cfg.RawCode != nil {
		err = v.loadRaw()
	} else {
		err = v.loadLinux()
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

func (v *VM) loadRaw() error {
	mem := v.mem.Bytes()
	if len(v.cfg.RawCode) > RawStackTop-RawLoadAddress-0x1000 {
		return fmt.Errorf("raw guest code of %d bytes does not fit below its stack", len(v.cfg.RawCode))
	}
	copy(mem[RawLoadAddress:], v.cfg.RawCode)
	var sregs kvm.Sregs
	if err := v.vcpu.GetSregs(&sregs); err != nil {
		return err
	}
	for _, s := range []*kvm.Segment{&sregs.CS, &sregs.DS, &sregs.ES, &sregs.FS, &sregs.GS, &sregs.SS} {
		s.Base, s.Selector = 0, 0
	}
	disableLocalAPIC(&sregs)
	if err := v.vcpu.SetSregs(&sregs); err != nil {
		return err
	}
	return v.vcpu.SetRegs(&kvm.Regs{RIP: RawLoadAddress, RSP: RawStackTop, RFLAGS: 0x2})
}

// Run runs the guest until it powers off or resets, ctx ends, or it fails.
// A failure is a *GuestError with the vCPU's registers and console tail.
func (v *VM) Run(ctx context.Context) (StopReason, error) {
	if v.loop.input != nil {
		go v.readConsoleInput(ctx)
	}
	reason, err := v.loop.run(ctx)
	if err != nil {
		return 0, v.Report(err)
	}
	return reason, nil
}

// Report describes the stopped VM's state for err: the vCPU registers and
// the last console lines. Run uses it for failures; callers use it when a
// stop without an error still means trouble (a reset after a panic).
func (v *VM) Report(err error) *GuestError {
	ge := &GuestError{Err: err, Console: v.console.Lines(20)}
	_ = v.vcpu.GetRegs(&ge.Regs)
	_ = v.vcpu.GetSregs(&ge.Sregs)
	return ge
}

func (v *VM) readConsoleInput(ctx context.Context) {
	buf := make([]byte, 256)
	for ctx.Err() == nil {
		n, err := v.cfg.ConsoleInput.Read(buf)
		if n > 0 {
			v.loop.input.push(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// Stats reports what the exit loop did; call it after Run returned.
func (v *VM) Stats() Stats { return v.loop.stats }

// Exits is the number of synchronous exits so far (the exit number the
// log counts by); safe to call from any goroutine while the VM runs.
func (v *VM) Exits() uint64 { return v.loop.exits.Load() }

// ConsoleOutput is the tail of what the guest printed.
func (v *VM) ConsoleOutput() string { return v.console.String() }

// Memory is the guest's RAM (for tests and snapshots).
func (v *VM) Memory() []byte { return v.mem.Bytes() }

// Close releases the VM's KVM objects and memory.
func (v *VM) Close() error {
	if v.closed {
		return nil
	}
	v.closed = true
	var errs []error
	if v.vcpu != nil {
		errs = append(errs, v.vcpu.Close())
	}
	if v.kvmVM != nil {
		errs = append(errs, v.kvmVM.Close())
	}
	if v.mem != nil {
		errs = append(errs, v.mem.Close())
	}
	if v.sys != nil {
		errs = append(errs, v.sys.Close())
	}
	return errors.Join(errs...)
}
