package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Saved state of a transport, its queues and its device, for machine
// snapshots. It is what the driver can observe: the registers, each queue's
// configuration and the device's private ring indices (the rings
// themselves are guest memory, saved with it). A snapshot is taken between
// exits, where ftvm's devices hold no chain (they serve every request
// inside the exit that made it), so no descriptor is in flight.

// Bounds on saved state, checked before anything is allocated.
const (
	// MaxStateQueues bounds the queues of a saved transport.
	MaxStateQueues = 64
	// MaxDeviceState bounds a device model's own saved state.
	MaxDeviceState = 256
	// MaxFailureText bounds the saved reason of a failed device.
	MaxFailureText = 1024
)

// QueueState is one virtqueue.
type QueueState struct {
	Size           uint16
	DescAddr       uint64
	DriverAddr     uint64
	DeviceAddr     uint64
	Ready          bool
	IndirectOK     bool
	EventIdx       bool
	LastAvail      uint16
	UsedIdx        uint16
	SignalledUsed  uint16
	SignalledValid bool
}

// TransportState is a virtio-mmio register block with its queues and the
// device model behind it.
type TransportState struct {
	DeviceType        uint32
	DeviceFeaturesSel uint32
	DriverFeaturesSel uint32
	DriverFeatures    uint64
	QueueSel          uint32
	Status            uint32
	InterruptStatus   uint32
	ConfigGeneration  uint32
	Activated         bool
	// Failure is why the device failed (DEVICE_NEEDS_RESET), "" if it
	// has not.
	Failure string
	Queues  []QueueState
	// Device is the device model's own state (StatefulDevice), nil for a
	// model that has none beyond its configuration.
	Device []byte
}

// StatefulDevice is a Device with guest-visible state of its own beyond
// what the transport and queues hold (virtio-net's link status).
type StatefulDevice interface {
	Device
	// SaveState encodes the state, at most MaxDeviceState bytes.
	SaveState() []byte
	// RestoreState loads what SaveState returned, or refuses it and
	// changes nothing. It raises no interrupt.
	RestoreState([]byte) error
}

// State returns the transport's state.
func (t *Transport) State() TransportState {
	s := TransportState{
		DeviceType: t.dev.Type(), DeviceFeaturesSel: t.deviceFeaturesSel, DriverFeaturesSel: t.driverFeaturesSel,
		DriverFeatures: t.driverFeatures, QueueSel: t.queueSel, Status: t.status,
		InterruptStatus: t.interruptStatus, ConfigGeneration: t.configGeneration, Activated: t.activated,
		Queues: make([]QueueState, len(t.qs)),
	}
	if t.failErr != nil {
		s.Failure = t.failErr.Error()
		if len(s.Failure) > MaxFailureText {
			s.Failure = s.Failure[:MaxFailureText]
		}
		if s.Failure == "" {
			s.Failure = "failed"
		}
	}
	for i, q := range t.qs {
		s.Queues[i] = QueueState{
			Size: q.size, DescAddr: q.descAddr, DriverAddr: q.driverAddr, DeviceAddr: q.devAddr,
			Ready: q.ready, IndirectOK: q.indirectOK, EventIdx: q.eventIdx, LastAvail: q.lastAvail,
			UsedIdx: q.usedIdx, SignalledUsed: q.signalledUsed, SignalledValid: q.signalledValid,
		}
	}
	if d, ok := t.dev.(StatefulDevice); ok {
		s.Device = d.SaveState()
	}
	return s
}

// knownStatus are the device status bits a driver can set or the device
// sets itself.
const knownStatus = StatusAcknowledge | StatusDriver | StatusDriverOK | StatusFeaturesOK |
	StatusDeviceNeedsReset | StatusFailed

// SetState loads s into a transport wrapping the same kind of device, on a
// machine whose guest memory already holds the saved rings: the queues are
// mapped again (and checked against this memory), and an activated device
// is activated again with the saved features. It drives no IRQ line (the
// PIC's saved state has the line's level). A state the transport could not
// have reached is refused before anything changes.
func (t *Transport) SetState(s TransportState) error {
	if err := t.checkState(&s); err != nil {
		return fmt.Errorf("virtio device at %#x: %w", t.cfg.Base, err)
	}
	// Every queue maps on scratch copies first: nothing changes unless
	// all of them can.
	mapped := make([]Queue, len(t.qs))
	for i, qs := range s.Queues {
		q := &mapped[i]
		*q = Queue{index: i, maxSize: t.qs[i].maxSize, size: qs.Size,
			descAddr: qs.DescAddr, driverAddr: qs.DriverAddr, devAddr: qs.DeviceAddr}
		if qs.Ready {
			if err := q.mapRings(t.cfg.Memory); err != nil {
				return fmt.Errorf("virtio device at %#x: saved %w", t.cfg.Base, err)
			}
		}
	}
	if d, ok := t.dev.(StatefulDevice); ok {
		if err := d.RestoreState(s.Device); err != nil {
			return fmt.Errorf("virtio device at %#x: %w", t.cfg.Base, err)
		}
	}
	t.dev.Reset()
	var failErr error
	if s.Failure != "" {
		failErr = restoredFailure(s.Failure)
	}
	for i, qs := range s.Queues {
		q := t.qs[i]
		q.reset()
		q.size, q.descAddr, q.driverAddr, q.devAddr = qs.Size, qs.DescAddr, qs.DriverAddr, qs.DeviceAddr
		if qs.Ready {
			q.desc, q.avail, q.used = mapped[i].desc, mapped[i].avail, mapped[i].used
			q.mem, q.ready = t.cfg.Memory, true
		}
		q.indirectOK, q.eventIdx = qs.IndirectOK, qs.EventIdx
		q.lastAvail, q.usedIdx = qs.LastAvail, qs.UsedIdx
		q.signalledUsed, q.signalledValid = qs.SignalledUsed, qs.SignalledValid
		q.err = failErr
	}
	t.deviceFeaturesSel, t.driverFeaturesSel, t.driverFeatures = s.DeviceFeaturesSel, s.DriverFeaturesSel, s.DriverFeatures
	t.queueSel, t.status, t.interruptStatus, t.configGeneration = s.QueueSel, s.Status, s.InterruptStatus, s.ConfigGeneration
	t.activated, t.failErr = s.Activated, failErr
	if s.Activated {
		if err := t.dev.Activate(t.driverFeatures, t.qs, t.cfg.Memory, t.sig); err != nil {
			// Activate accepted these features and queues when the
			// driver set DRIVER_OK; it fails the device, as it did not.
			t.fail(err)
		}
	}
	return nil
}

// restoredFailure is a device failure carried over from a snapshot.
type restoredFailure string

func (e restoredFailure) Error() string { return string(e) }

// checkState refuses a state this transport cannot take.
func (t *Transport) checkState(s *TransportState) error {
	switch {
	case s.DeviceType != t.dev.Type():
		return fmt.Errorf("saved device type %d, this one is type %d", s.DeviceType, t.dev.Type())
	case len(s.Queues) != len(t.qs):
		return fmt.Errorf("saved %d queues, this device has %d", len(s.Queues), len(t.qs))
	case s.Status&^knownStatus != 0:
		return fmt.Errorf("status %#x has unknown bits", s.Status)
	case s.Status&StatusDriverOK != 0 && s.Status&StatusFeaturesOK == 0:
		return errors.New("DRIVER_OK without FEATURES_OK")
	case s.Status&StatusFeaturesOK != 0 && s.DriverFeatures&^t.offr != 0:
		return fmt.Errorf("driver features %#x beyond those offered (%#x)", s.DriverFeatures, t.offr)
	case s.Activated && s.Status&StatusDriverOK == 0:
		return errors.New("activated without DRIVER_OK")
	case s.InterruptStatus&^(InterruptUsedBuffer|InterruptConfigChange) != 0:
		return fmt.Errorf("interrupt status %#x has unknown bits", s.InterruptStatus)
	case len(s.Failure) > MaxFailureText:
		return fmt.Errorf("failure text of %d bytes, at most %d", len(s.Failure), MaxFailureText)
	case len(s.Device) > MaxDeviceState:
		return fmt.Errorf("device state of %d bytes, at most %d", len(s.Device), MaxDeviceState)
	}
	if _, ok := t.dev.(StatefulDevice); !ok && len(s.Device) != 0 {
		return fmt.Errorf("%d bytes of device state for a device that keeps none", len(s.Device))
	}
	for i, q := range s.Queues {
		if q.Size > t.qs[i].maxSize {
			return fmt.Errorf("queue %d: size %d beyond its maximum %d", i, q.Size, t.qs[i].maxSize)
		}
	}
	return nil
}

// SaveState implements StatefulDevice: the link status (le16).
func (n *Net) SaveState() []byte {
	return binary.LittleEndian.AppendUint16(nil, n.status)
}

// RestoreState implements StatefulDevice.
func (n *Net) RestoreState(b []byte) error {
	if len(b) != 2 {
		return fmt.Errorf("virtio-net state of %d bytes, want 2", len(b))
	}
	s := binary.LittleEndian.Uint16(b)
	if s&^NetLinkUp != 0 {
		return fmt.Errorf("virtio-net link status %#x has unknown bits", s)
	}
	n.status = s
	return nil
}
