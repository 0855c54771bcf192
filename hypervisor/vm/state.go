package vm

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// machineModels are the VM's device models, kept for saving and loading
// their state (the loop reaches them through its own narrower views).
type machineModels struct {
	pic    *devices.PICPair
	pit    *devices.PIT
	portB  *devices.PortB
	uart   *devices.UART
	rtc    *devices.RTC
	pm     *devices.ACPIPM
	legacy *devices.Legacy
	virtio []*virtio.Transport // slot order
}

// DeviceState is the guest-visible state of every device model of the
// machine (hypervisor/devices and virtio), as State methods return it.
type DeviceState struct {
	PIC    devices.PICState
	PIT    devices.PITState
	PortB  devices.PortBState
	UART   devices.UARTState
	RTC    devices.RTCState
	PM     devices.ACPIPMState
	Legacy devices.LegacyState
	// Virtio has one transport per virtio-mmio slot: the NIC first if
	// there is one, then the disks in order.
	Virtio []virtio.TransportState
}

// MachineState is the VM between two KVM_RUN calls, without its memory:
// where it is in the exit count, its guest time, its vCPU and its devices.
// With guest memory (VM.Memory) it is everything a VM built from the same
// Config needs to go on from that point (package snapshot writes both).
//
// Not in it, because the guest has not seen it yet: console input typed
// but not taken by the UART, frames received but not yet placed in a
// receive buffer (a restored machine has lost them, as a frame lost on the
// wire), and outputs in flight outside the VM.
type MachineState struct {
	// Exit is the number of synchronous exits so far: the replay
	// position (a log's entries for later exits apply after it).
	Exit uint64
	// GuestTime is the guest clock when the state was taken; the devices
	// keep their deadlines and counters in it.
	GuestTime time.Duration
	CPU       CPUState
	Devices   DeviceState
}

// Devices returns the state of every device model. Call it only while the
// vCPU is not in KVM_RUN (between exits on the vCPU goroutine, or after Run
// returned). It reads no guest time.
func (v *VM) Devices() DeviceState {
	m := &v.models
	s := DeviceState{
		PIC: m.pic.State(), PIT: m.pit.State(), PortB: m.portB.State(), UART: m.uart.State(),
		RTC: m.rtc.State(), PM: m.pm.State(), Legacy: m.legacy.State(),
		Virtio: make([]virtio.TransportState, len(m.virtio)),
	}
	for i, t := range m.virtio {
		s.Virtio[i] = t.State()
	}
	return s
}

// SetDevices loads s into the device models of a VM built from the same
// Config (the same virtio devices in the same slots). Every fixed model's
// state is checked before any is loaded; a virtio transport checks its own
// (its rings against this VM's memory) as it loads. On an error the
// devices may be partly loaded: the VM must not run then.
func (v *VM) SetDevices(s DeviceState) error {
	if err := v.setDevices(s); err != nil {
		return fmt.Errorf("load device state: %w", err)
	}
	return nil
}

func (v *VM) setDevices(s DeviceState) error {
	m := &v.models
	if len(s.Virtio) != len(m.virtio) {
		return fmt.Errorf("%d virtio devices saved, this machine has %d", len(s.Virtio), len(m.virtio))
	}
	if err := errors.Join(s.PIC.Validate(), s.PIT.Validate(), s.PortB.Validate(), s.UART.Validate(),
		s.RTC.Validate(), s.PM.Validate(), s.Legacy.Validate()); err != nil {
		return err
	}
	for i, t := range m.virtio {
		if err := t.SetState(s.Virtio[i]); err != nil {
			return err
		}
	}
	// The PIC last: it holds the level of every line the others drive.
	return errors.Join(m.pit.SetState(s.PIT), m.portB.SetState(s.PortB), m.uart.SetState(s.UART),
		m.rtc.SetState(s.RTC), m.pm.SetState(s.PM), m.legacy.SetState(s.Legacy), m.pic.SetState(s.PIC))
}

// SaveState captures the machine at this point (see MachineState; guest
// memory is VM.Memory). Call it only while the vCPU is not in KVM_RUN: after
// Run returned, or between exits on the vCPU goroutine. Capturing the vCPU
// completes a pending I/O instruction first (see CaptureCPU), so a primary
// and its backup must save at the same exits or neither.
func (v *VM) SaveState(s *MachineState) error {
	if v.loop.rep != nil {
		// A replaying backup's devices read the logged guest time, not
		// the loop's clock; a resync from a backup will need that value.
		return errors.New("save machine state: a VM that replays a log cannot be saved yet (its guest time is the log's)")
	}
	var cpu CPUState
	if err := v.CaptureCPU(&cpu); err != nil {
		return err
	}
	*s = MachineState{Exit: v.loop.syncExits, GuestTime: v.loop.clock.Now(), CPU: cpu, Devices: v.Devices()}
	return nil
}

// LoadState makes a VM built from the same Config, not yet run, go on from
// s: the vCPU, the devices, the exit count and, if the VM made its own
// clock (Config.Clock nil), the guest time. A Config.Clock of the caller's
// must already read s.GuestTime (NewLiveClockAt). Guest memory is loaded
// separately, before Run. On an error the VM must not run.
func (v *VM) LoadState(s *MachineState) error {
	if s.GuestTime < 0 {
		return fmt.Errorf("load machine state: guest time %v is negative", s.GuestTime)
	}
	if err := v.SetDevices(s.Devices); err != nil {
		return err
	}
	if err := v.RestoreCPU(&s.CPU); err != nil {
		return err
	}
	v.loop.syncExits = s.Exit
	v.loop.loadedAt = true
	if v.loop.rec != nil {
		startRecorderAt(v.loop.rec, s.Exit) // a primary's fast start
	}
	// A backup that goes live before the log gave it any clock read goes
	// on from the snapshot's guest time, not from zero.
	v.loop.lastReplayedClock = s.GuestTime
	if v.ownClock != nil {
		*v.ownClock = *NewLiveClockAt(s.GuestTime)
	}
	return nil
}

// ExitNumber is the number of synchronous exits so far (the replay
// position). Read it only while the vCPU is not in KVM_RUN.
func (v *VM) ExitNumber() uint64 { return v.loop.syncExits }
