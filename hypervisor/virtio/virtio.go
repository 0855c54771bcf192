// Package virtio implements the device side of virtio 1.1 over the
// virtio-mmio transport: guest-memory access (Memory), split virtqueues
// (Queue, Chain) and the MMIO register block (Transport). Device models
// (virtio-net, virtio-blk) implement Device and are wrapped in a Transport,
// which the VMM registers as a devices.MMIODevice.
//
// Determinism (DESIGN.md, "The determinism contract"): nothing here starts
// a goroutine, reads a clock or keeps package-level state. Everything runs
// on the vCPU exit loop: a QueueNotify write calls Device.Notify
// synchronously inside WriteMMIO, and a device that completes work later
// (a received frame, a disk completion) does so from an event the exit
// loop delivers at a synchronous exit. While any of it runs the single vCPU
// is stopped in KVM_RUN's exit path, so the guest never observes a ring
// half-updated, and plain stores in program order (used element, then used
// idx) are the ordering the spec asks of a device.
//
// Malformed driver behaviour (rings or buffers outside guest RAM, lengths
// that overflow, descriptor loops, bad indices) never panics and never
// loops: the queue returns a *QueueError, the transport marks the device
// failed, sets DEVICE_NEEDS_RESET in Status, raises a configuration-change
// interrupt and logs the problem once. Only a driver reset (Status = 0)
// brings the device back.
package virtio

import (
	"fmt"
	"log/slog"
)

// Device types (virtio 1.1 §5).
const (
	DeviceNet   uint32 = 1
	DeviceBlock uint32 = 2
)

// Feature bits reserved for the transport and ring layout (virtio 1.1 §6).
// A Device returns only its device-specific bits (0-23); the transport
// adds these.
const (
	FeatureIndirectDesc = 28 // VIRTIO_F_INDIRECT_DESC
	FeatureEventIdx     = 29 // VIRTIO_F_EVENT_IDX
	FeatureVersion1     = 32 // VIRTIO_F_VERSION_1
)

// Device status bits (virtio 1.1 §2.1).
const (
	StatusAcknowledge      uint32 = 1
	StatusDriver           uint32 = 2
	StatusDriverOK         uint32 = 4
	StatusFeaturesOK       uint32 = 8
	StatusDeviceNeedsReset uint32 = 0x40
	StatusFailed           uint32 = 0x80
)

// InterruptStatus bits (virtio 1.1 §4.2.2).
const (
	InterruptUsedBuffer   uint32 = 1
	InterruptConfigChange uint32 = 2
)

// Device is a virtio device model (virtio-net, virtio-blk) behind a
// Transport. The transport owns the feature negotiation, the queues and
// the interrupt line; the device owns its config space and what it does
// with descriptor chains. All methods are called from the vCPU exit loop.
type Device interface {
	// Type is the virtio device ID (DeviceNet, DeviceBlock).
	Type() uint32
	// Features are the device-specific feature bits offered to the
	// driver. The transport adds VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX
	// and VIRTIO_F_INDIRECT_DESC.
	Features() uint64
	// QueueMaxSizes gives the number of queues and each one's maximum
	// size (QueueNumMax): a power of two, 1..32768. Called once, by
	// NewTransport.
	QueueMaxSizes() []uint16
	// ReadConfig fills data from the device config space at offset
	// (relative to the start of config space, 0x100 in the register
	// block). Bytes beyond the config space read as zero.
	ReadConfig(offset uint64, data []byte)
	// WriteConfig writes the device config space at offset.
	WriteConfig(offset uint64, data []byte)
	// Activate is called when the driver sets DRIVER_OK. features is the
	// negotiated set (transport bits included); queues has one entry per
	// QueueMaxSizes element, and a queue the driver did not enable has
	// Ready() false. The device keeps the queues, mem and signal until
	// Reset. An error fails the device (DEVICE_NEEDS_RESET).
	Activate(features uint64, queues []*Queue, mem *Memory, signal Signaller) error
	// Notify is called when the driver writes queue index q to
	// QueueNotify (only after a successful Activate). The device
	// typically drains the queue with Pop/Push and calls
	// signal.UsedBuffers(q). An error (typically a *QueueError from Pop)
	// fails the device.
	Notify(q int) error
	// Reset returns the device to its pre-Activate state, dropping the
	// queues and any chains it holds. Called when the driver writes 0 to
	// Status and by Transport.Reset, whether or not Activate happened.
	Reset()
}

// Signaller is the transport's interface for an activated device.
type Signaller interface {
	// UsedBuffers raises the used-buffer interrupt for queue q unless the
	// driver suppressed it (VIRTIO_F_EVENT_IDX used_event, otherwise
	// VRING_AVAIL_F_NO_INTERRUPT). Call it after one or more Push.
	UsedBuffers(q int)
	// ConfigChanged bumps ConfigGeneration and raises the
	// configuration-change interrupt (e.g. link status changed).
	ConfigChanged()
	// Fail marks the device failed (DEVICE_NEEDS_RESET, config-change
	// interrupt, one log line) for a driver error the device detected
	// itself outside Notify. Queue errors fail the device on their own.
	Fail(err error)
}

// QueueError is malformed driver behaviour found on a virtqueue. It fails
// the device.
type QueueError struct {
	Queue   int    // queue index
	Desc    int    // descriptor index involved, -1 if none
	Problem string // what the driver did wrong
}

func (e *QueueError) Error() string {
	if e.Desc < 0 {
		return fmt.Sprintf("virtqueue %d: %s", e.Queue, e.Problem)
	}
	return fmt.Sprintf("virtqueue %d descriptor %d: %s", e.Queue, e.Desc, e.Problem)
}

// LogValue makes slog print the fields separately.
func (e *QueueError) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("queue", e.Queue),
		slog.Int("desc", e.Desc),
		slog.String("problem", e.Problem),
	)
}
