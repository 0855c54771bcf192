package replay

import (
	"fmt"
	"math"
)

// Type identifies an event in the log. The values are part of the wire
// format (codec.go): never renumber one, only add new ones, and bump Version
// when an existing type's fields change.
type Type uint8

const (
	// ExitMark anchors the log to the guest's execution: exit number Exit
	// was of kind Kind (a kvm.ExitKind, all of which are < 256) with the
	// vCPU at RIP. It is the first entry of every exit that carries any
	// other event, and the recorder also emits one every K exits (K is the
	// integration's choice) so a CPU-bound guest still yields checks and
	// the backup learns the primary has moved past an exit.
	//
	// Primary: after the exit returns from KVM_RUN, before any event of
	// that exit. Backup: compares Kind and RIP with its own exit #Exit;
	// any difference is a divergence.
	ExitMark Type = 1

	// ClockRead is the value a device's Clock.Now() returned on the
	// primary (Value, guest ns since power-on) while it handled exit
	// #Exit: PM timer, PIT counter and RTC reads. Several at one exit are
	// consumed in log order.
	//
	// Primary: inside the recording Clock, every call. Backup: the
	// replaying Clock returns Value; a Now() call when the next entry is
	// not a ClockRead at the current exit is a divergence.
	ClockRead Type = 2

	// TimerFired says the primary ran Timer #Device's Expire(Value) after
	// exit #Exit (the loop's expireTimers, in the exit path or while
	// halted). Value is the now passed to Expire, because timed devices
	// compute their next state from it.
	//
	// Backup: never consults its own clock or deadlines; it calls
	// timers[Device].Expire(Value) where the log says.
	TimerFired Type = 3

	// InterruptInjected records the KVM_INTERRUPT of Vector done before
	// the KVM_RUN that follows exit #Exit. It is derived state (the PIC
	// decides it from logged inputs), logged as a cross-check: the backup
	// injects what its own PIC asserts and compares.
	InterruptInjected Type = 4

	// ConsoleInput carries the bytes the UART accepted (Receive's return)
	// after exit #Exit. Only accepted bytes are logged; the rest stay in
	// the primary's queue and appear in a later entry. The backup's UART,
	// in the same state, must accept all of them; accepting fewer is a
	// divergence.
	ConsoleInput Type = 5

	// FrameReceived carries a frame handed to network device #Device after
	// exit #Exit (frameInbox delivery). Whether the device had room for it
	// is a pure function of guest state, so the backup hands the same frame
	// and gets the same outcome.
	FrameReceived Type = 6

	// DiskRead carries the data block device #Device read from shared
	// storage at byte Offset while handling exit #Exit. The backup must
	// not read the disk itself: the primary may have written it since.
	// A request larger than MaxDiskRead is logged as several entries with
	// consecutive offsets.
	DiskRead Type = 7

	// DiskDone carries the status byte (Status; virtio-blk's
	// VIRTIO_BLK_S_*) block device #Device reported for a request it
	// completed at exit #Exit whose outcome the backup cannot compute: a
	// write (the backup does not write) or a read that failed. Emitted
	// for every such request, so the backup consumes exactly one per
	// request without guessing.
	DiskDone Type = 8

	// Kick says the primary's watchdog kicked the vCPU after exit #Exit
	// and then changed guest-visible state at that uncounted point (an
	// overdue timer or injection). The backup cannot find that
	// instruction, so replay stops after exit #Exit and the pair resyncs
	// by checkpoint. A kick that changed nothing need not be logged.
	Kick Type = 9

	// StateDigest carries hashes of the vCPU registers (Regs, RegsDigest)
	// and of guest memory (Memory, MemoryDigest or MemoryHasher) taken
	// after exit #Exit was handled, before the next KVM_RUN. Periodic
	// (every N exits or T of guest time); the backup computes its own at
	// the same exit and compares.
	StateDigest Type = 10

	// Output carries a hash (Hash, OutputHash) of an output produced at
	// exit #Exit by device #Device: a transmitted frame or a disk write,
	// per Kind (OutputFrame, OutputDiskWrite). Optional: lets the backup,
	// which drops its outputs, check it would have produced the same ones.
	Output Type = 11

	// CheckpointCPU carries the primary's vCPU state (Data, a
	// vm.CPUState encoding) right after a Kick at exit #Exit; the
	// CheckpointPage and CheckpointZero entries that follow carry the
	// guest pages the primary wrote since its previous checkpoint (since
	// power-on for the first). The backup, stopped after exit #Exit,
	// loads them all and continues from the primary's state: the resync
	// of DESIGN.md rule 5.
	CheckpointCPU Type = 12
	// CheckpointPage: the 4 KiB page at guest-physical address Value
	// holds Data (PageSize bytes).
	CheckpointPage Type = 13
	// CheckpointZero: the page at Value is all zeros (no payload).
	CheckpointZero Type = 14
	// CheckpointChunk carries up to MaxChunkPages of a checkpoint's pages
	// (Data, a page chunk: see pagechunk.go): each zero, compressed
	// content, or only a hash the backup checks its own page against.
	// Since Version 2 the recorder ships a checkpoint's pages this way;
	// the backup still loads CheckpointPage and CheckpointZero.
	CheckpointChunk Type = 15

	maxType = CheckpointChunk
)

// Output kinds (Event.Kind of an Output entry).
const (
	OutputFrame     uint8 = 1
	OutputDiskWrite uint8 = 2
)

// Bounds on payloads. They bound what a decoder of untrusted bytes accepts
// and what a recorder may log in one entry.
const (
	// MaxConsoleInput is the most console bytes in one entry. The 16550
	// takes at most 16 (its FIFO) per exit; the bound leaves room for a
	// deeper console device without a format change.
	MaxConsoleInput = 4096
	// MaxFrame is the largest frame; virtio-net without GSO/mergeable
	// buffers receives at most 65550 bytes, so 64 KiB covers every frame
	// the device can accept.
	MaxFrame = 64 << 10
	// MaxDiskRead is the most read data in one entry.
	MaxDiskRead = 1 << 20
	// MaxCPUState bounds a CheckpointCPU payload (the encoding is a few
	// KiB, mostly the XSAVE area).
	MaxCPUState = 64 << 10
)

// Event is one log entry. It is a tagged union rather than one Go type per
// event so that encoding and decoding never box a value into an interface
// (no allocation per event); each field's use per Type is listed below,
// and fields a Type does not use must be zero (the codec rejects anything
// else so that every accepted encoding is canonical).
//
//	Type               Exit Kind      Device RIP Value  Data        Regs Memory Hash
//	ExitMark           x    exitkind         x
//	ClockRead          x                         ns
//	TimerFired         x              timer      ns
//	InterruptInjected  x    vector
//	ConsoleInput       x                                bytes
//	FrameReceived      x              netdev            frame
//	DiskRead           x              blkdev     offset data
//	DiskDone           x    status    blkdev
//	Kick               x
//	StateDigest        x                                            x    x
//	Output             x    outkind   dev                                       x
//	CheckpointCPU      x                                state
//	CheckpointPage     x                         addr   page
//	CheckpointZero     x                         addr
//	CheckpointChunk    x                                chunk
type Event struct {
	Type Type
	// Exit is the number of synchronous, guest-caused exits (PIO, MMIO,
	// HLT, IRQ-window-open, debug) since power-on, counting from 1 for
	// the first; 0 means before the first KVM_RUN.
	Exit uint64
	// Kind is the exit kind, the vector, the disk status or the output
	// kind, depending on Type.
	Kind uint8
	// Device indexes the timer, network device, block device or output
	// device in the VM's fixed, configuration-ordered list.
	Device uint8
	RIP    uint64
	// Value is guest ns for ClockRead and TimerFired (never negative:
	// the clock counts from power-on) and a byte offset for DiskRead.
	Value int64
	// Data is the payload. After Decode it aliases the decoded batch:
	// copy it to keep it past the buffer's reuse.
	Data []byte
	// Regs and Memory are StateDigest's RegsDigest and memory root; Hash
	// is Output's OutputHash.
	Regs, Memory, Hash [32]byte
}

func (e *Event) String() string {
	switch e.Type {
	case ExitMark:
		return fmt.Sprintf("exit %d: mark kind %d rip %#x", e.Exit, e.Kind, e.RIP)
	case ClockRead:
		return fmt.Sprintf("exit %d: clock read %d ns", e.Exit, e.Value)
	case TimerFired:
		return fmt.Sprintf("exit %d: timer %d fired at %d ns", e.Exit, e.Device, e.Value)
	case InterruptInjected:
		return fmt.Sprintf("exit %d: injected vector %#x", e.Exit, e.Kind)
	case ConsoleInput:
		return fmt.Sprintf("exit %d: console input %q", e.Exit, e.Data)
	case FrameReceived:
		return fmt.Sprintf("exit %d: net %d received %d-byte frame", e.Exit, e.Device, len(e.Data))
	case DiskRead:
		return fmt.Sprintf("exit %d: blk %d read %d bytes at %d", e.Exit, e.Device, len(e.Data), e.Value)
	case DiskDone:
		return fmt.Sprintf("exit %d: blk %d request done, status %d", e.Exit, e.Device, e.Kind)
	case Kick:
		return fmt.Sprintf("exit %d: kick", e.Exit)
	case StateDigest:
		return fmt.Sprintf("exit %d: digest regs %x memory %x", e.Exit, e.Regs[:8], e.Memory[:8])
	case Output:
		return fmt.Sprintf("exit %d: output kind %d dev %d hash %x", e.Exit, e.Kind, e.Device, e.Hash[:8])
	case CheckpointCPU:
		return fmt.Sprintf("exit %d: checkpoint CPU state, %d bytes", e.Exit, len(e.Data))
	case CheckpointPage:
		return fmt.Sprintf("exit %d: checkpoint page %#x", e.Exit, e.Value)
	case CheckpointZero:
		return fmt.Sprintf("exit %d: checkpoint zero page %#x", e.Exit, e.Value)
	case CheckpointChunk:
		return fmt.Sprintf("exit %d: checkpoint page chunk, %d bytes", e.Exit, len(e.Data))
	}
	return fmt.Sprintf("exit %d: %v", e.Exit, e.Type)
}

func (t Type) String() string {
	names := [...]string{"", "ExitMark", "ClockRead", "TimerFired", "InterruptInjected",
		"ConsoleInput", "FrameReceived", "DiskRead", "DiskDone", "Kick", "StateDigest", "Output",
		"CheckpointCPU", "CheckpointPage", "CheckpointZero", "CheckpointChunk"}
	if t >= 1 && t <= maxType {
		return names[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Constructors, so that call sites name only the fields a type uses.

// NewExitMark returns an ExitMark entry.
func NewExitMark(exit uint64, kind uint8, rip uint64) Event {
	return Event{Type: ExitMark, Exit: exit, Kind: kind, RIP: rip}
}

// NewClockRead returns a ClockRead entry; ns is the value Now() returned.
func NewClockRead(exit uint64, ns int64) Event {
	return Event{Type: ClockRead, Exit: exit, Value: ns}
}

// NewTimerFired returns a TimerFired entry; ns is the now passed to Expire.
func NewTimerFired(exit uint64, timer uint8, ns int64) Event {
	return Event{Type: TimerFired, Exit: exit, Device: timer, Value: ns}
}

// NewInterruptInjected returns an InterruptInjected entry.
func NewInterruptInjected(exit uint64, vector uint8) Event {
	return Event{Type: InterruptInjected, Exit: exit, Kind: vector}
}

// NewConsoleInput returns a ConsoleInput entry; data is not copied.
func NewConsoleInput(exit uint64, data []byte) Event {
	return Event{Type: ConsoleInput, Exit: exit, Data: data}
}

// NewFrameReceived returns a FrameReceived entry; frame is not copied.
func NewFrameReceived(exit uint64, dev uint8, frame []byte) Event {
	return Event{Type: FrameReceived, Exit: exit, Device: dev, Data: frame}
}

// NewDiskRead returns a DiskRead entry; data is not copied.
func NewDiskRead(exit uint64, dev uint8, offset int64, data []byte) Event {
	return Event{Type: DiskRead, Exit: exit, Device: dev, Value: offset, Data: data}
}

// NewDiskDone returns a DiskDone entry.
func NewDiskDone(exit uint64, dev uint8, status uint8) Event {
	return Event{Type: DiskDone, Exit: exit, Device: dev, Kind: status}
}

// NewKick returns a Kick entry.
func NewKick(exit uint64) Event { return Event{Type: Kick, Exit: exit} }

// NewStateDigest returns a StateDigest entry.
func NewStateDigest(exit uint64, regs, memory [32]byte) Event {
	return Event{Type: StateDigest, Exit: exit, Regs: regs, Memory: memory}
}

// NewOutput returns an Output entry.
func NewOutput(exit uint64, kind, dev uint8, hash [32]byte) Event {
	return Event{Type: Output, Exit: exit, Kind: kind, Device: dev, Hash: hash}
}

// NewCheckpointCPU returns a CheckpointCPU entry; state is not copied.
func NewCheckpointCPU(exit uint64, state []byte) Event {
	return Event{Type: CheckpointCPU, Exit: exit, Data: state}
}

// NewCheckpointPage returns a CheckpointPage entry, or a CheckpointZero one
// if page is all zeros; page is not copied.
func NewCheckpointPage(exit uint64, addr int64, page []byte) Event {
	for _, b := range page {
		if b != 0 {
			return Event{Type: CheckpointPage, Exit: exit, Value: addr, Data: page}
		}
	}
	return Event{Type: CheckpointZero, Exit: exit, Value: addr}
}

// NewCheckpointChunk returns a CheckpointChunk entry; chunk is not copied.
func NewCheckpointChunk(exit uint64, chunk []byte) Event {
	return Event{Type: CheckpointChunk, Exit: exit, Data: chunk}
}

// validate checks e against the field table of Event and the payload
// bounds. Encoder and Decoder share it so that both accept exactly the same
// set of events, which is what makes every decoded batch re-encode to the
// same bytes.
func (e *Event) validate() error {
	var zero [32]byte
	use := fieldsOf(e.Type)
	if use == 0 {
		return fmt.Errorf("unknown event type %d", uint8(e.Type))
	}
	switch {
	case use&fKind == 0 && e.Kind != 0,
		use&fDevice == 0 && e.Device != 0,
		use&fRIP == 0 && e.RIP != 0,
		use&fValue == 0 && e.Value != 0,
		use&fData == 0 && e.Data != nil,
		use&fDigests == 0 && (e.Regs != zero || e.Memory != zero),
		use&fHash == 0 && e.Hash != zero:
		return fmt.Errorf("%v at exit %d sets a field its type does not use", e.Type, e.Exit)
	}
	if use&fValue != 0 && e.Value < 0 {
		return fmt.Errorf("%v at exit %d: negative value %d", e.Type, e.Exit, e.Value)
	}
	if use&fData != 0 {
		limit := maxData(e.Type)
		if len(e.Data) == 0 {
			return fmt.Errorf("%v at exit %d: empty payload", e.Type, e.Exit)
		}
		if len(e.Data) > limit {
			return fmt.Errorf("%v at exit %d: %d-byte payload exceeds the %d-byte bound", e.Type, e.Exit, len(e.Data), limit)
		}
	}
	if e.Type == DiskRead && e.Value > math.MaxInt64-int64(len(e.Data)) {
		return fmt.Errorf("DiskRead at exit %d: offset %d + %d bytes overflows", e.Exit, e.Value, len(e.Data))
	}
	if (e.Type == CheckpointPage || e.Type == CheckpointZero) && e.Value%PageSize != 0 {
		return fmt.Errorf("%v at exit %d: address %#x is not page aligned", e.Type, e.Exit, e.Value)
	}
	if e.Type == CheckpointPage && len(e.Data) != PageSize {
		return fmt.Errorf("CheckpointPage at exit %d: %d bytes, a page is %d", e.Exit, len(e.Data), PageSize)
	}
	if e.Type == Output && e.Kind != OutputFrame && e.Kind != OutputDiskWrite {
		return fmt.Errorf("Output at exit %d: unknown output kind %d", e.Exit, e.Kind)
	}
	return nil
}

const (
	fKind = 1 << iota
	fDevice
	fRIP
	fValue
	fData
	fDigests
	fHash
	fKnown // set for every known type, so a type using only Exit is non-zero
)

// fieldsOf is the field table of Event as bits; 0 for an unknown type.
func fieldsOf(t Type) int {
	switch t {
	case ExitMark:
		return fKnown | fKind | fRIP
	case ClockRead:
		return fKnown | fValue
	case TimerFired:
		return fKnown | fDevice | fValue
	case InterruptInjected:
		return fKnown | fKind
	case ConsoleInput:
		return fKnown | fData
	case FrameReceived:
		return fKnown | fDevice | fData
	case DiskRead:
		return fKnown | fDevice | fValue | fData
	case DiskDone:
		return fKnown | fKind | fDevice
	case Kick:
		return fKnown
	case StateDigest:
		return fKnown | fDigests
	case Output:
		return fKnown | fKind | fDevice | fHash
	case CheckpointCPU:
		return fKnown | fData
	case CheckpointPage:
		return fKnown | fValue | fData
	case CheckpointZero:
		return fKnown | fValue
	case CheckpointChunk:
		return fKnown | fData
	}
	return 0
}

func maxData(t Type) int {
	switch t {
	case ConsoleInput:
		return MaxConsoleInput
	case FrameReceived:
		return MaxFrame
	case DiskRead:
		return MaxDiskRead
	case CheckpointCPU:
		return MaxCPUState
	case CheckpointPage:
		return PageSize
	case CheckpointChunk:
		return MaxCheckpointChunk
	}
	return 0
}
