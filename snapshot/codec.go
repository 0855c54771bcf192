package snapshot

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/virtio"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

// The identity and machine records' payloads. Device states with only
// fixed-size fields are encoded with encoding/binary (packed, little
// endian, bools as one byte); everything of variable length carries its
// length first, bounded on decoding.

// maxVirtio bounds the virtio transports of a machine (one per IRQ line
// the machine has for them).
const maxVirtio = len(devices.VirtioIRQs)

var le = binary.LittleEndian

func appendString16(b []byte, s string) []byte {
	b = le.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func encodeIdentity(id *Identity) ([]byte, error) {
	if err := checkIdentity(id); err != nil {
		return nil, err
	}
	b := le.AppendUint32(nil, uint32(id.MemoryMiB))
	b = appendString16(b, id.KernelSHA256)
	b = appendString16(b, id.InitrdSHA256)
	b = appendString16(b, id.Cmdline)
	nic := byte(0)
	if id.NIC {
		nic = 1
	}
	b = append(b, nic)
	b = appendString16(b, id.MAC)
	b = le.AppendUint16(b, uint16(len(id.Disks)))
	for _, d := range id.Disks {
		b = appendString16(b, d)
	}
	b = le.AppendUint16(b, uint16(len(id.CPUID)))
	for _, e := range id.CPUID {
		for _, v := range [...]uint32{e.Function, e.Index, e.Flags, e.EAX, e.EBX, e.ECX, e.EDX} {
			b = le.AppendUint32(b, v)
		}
	}
	return b, nil
}

// checkIdentity holds an identity to the bounds the decoder enforces, so
// that whatever is written reads back.
func checkIdentity(id *Identity) error {
	if err := vm.CheckMemory(id.MemoryMiB); err != nil || id.MemoryMiB == 0 {
		return fmt.Errorf("identity: memory %d MiB is not a machine's", id.MemoryMiB)
	}
	switch {
	case len(id.KernelSHA256) > maxHashText || len(id.InitrdSHA256) > maxHashText:
		return fmt.Errorf("identity: a hash longer than %d characters", maxHashText)
	case len(id.Cmdline) > maxCmdline:
		return fmt.Errorf("identity: command line of %d bytes, at most %d", len(id.Cmdline), maxCmdline)
	case len(id.MAC) > maxMAC:
		return fmt.Errorf("identity: MAC of %d characters", len(id.MAC))
	case len(id.Disks) > maxDisks:
		return fmt.Errorf("identity: %d disks, at most %d", len(id.Disks), maxDisks)
	case len(id.CPUID) > maxCPUID:
		return fmt.Errorf("identity: %d CPUID leaves, at most %d", len(id.CPUID), maxCPUID)
	}
	for _, d := range id.Disks {
		if len(d) > maxDiskName {
			return fmt.Errorf("identity: disk name of %d bytes, at most %d", len(d), maxDiskName)
		}
	}
	return nil
}

func decodeIdentity(p []byte) (Identity, error) {
	r := fieldReader{b: p, what: "identity"}
	var id Identity
	id.MemoryMiB = int(r.u32())
	id.KernelSHA256 = r.string16(maxHashText)
	id.InitrdSHA256 = r.string16(maxHashText)
	id.Cmdline = r.string16(maxCmdline)
	nic := r.u8()
	id.NIC = nic == 1
	id.MAC = r.string16(maxMAC)
	nd := r.count16(maxDisks, 2)
	for i := 0; i < nd && r.err == nil; i++ {
		id.Disks = append(id.Disks, r.string16(maxDiskName))
	}
	nc := r.count16(maxCPUID, 28)
	if nc > 0 && r.err == nil {
		id.CPUID = make([]kvm.CPUIDEntry2, nc)
	}
	for i := 0; i < nc && r.err == nil; i++ {
		e := &id.CPUID[i]
		e.Function, e.Index, e.Flags = r.u32(), r.u32(), r.u32()
		e.EAX, e.EBX, e.ECX, e.EDX = r.u32(), r.u32(), r.u32(), r.u32()
	}
	if err := r.finish(); err != nil {
		return Identity{}, err
	}
	if nic > 1 {
		return Identity{}, fmt.Errorf("identity: NIC flag %d", nic)
	}
	if err := checkIdentity(&id); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// transportFixed is a virtio transport's state without its variable parts.
type transportFixed struct {
	DeviceType        uint32
	DeviceFeaturesSel uint32
	DriverFeaturesSel uint32
	DriverFeatures    uint64
	QueueSel          uint32
	Status            uint32
	InterruptStatus   uint32
	ConfigGeneration  uint32
	Activated         bool
}

func encodeMachine(s *vm.MachineState) ([]byte, error) {
	if s.GuestTime < 0 {
		return nil, fmt.Errorf("machine: guest time %v is negative", s.GuestTime)
	}
	cpu, err := s.CPU.MarshalBinary()
	if err != nil {
		return nil, err
	}
	d := &s.Devices
	if len(d.Virtio) > maxVirtio {
		return nil, fmt.Errorf("machine: %d virtio devices, at most %d", len(d.Virtio), maxVirtio)
	}
	b := le.AppendUint64(nil, s.Exit)
	b = le.AppendUint64(b, uint64(s.GuestTime))
	b = le.AppendUint32(b, uint32(len(cpu)))
	b = append(b, cpu...)
	for _, v := range []any{&d.PIC, &d.PIT, &d.PortB, &d.UART, &d.RTC, &d.PM, &d.Legacy} {
		if b, err = binary.Append(b, le, v); err != nil {
			return nil, fmt.Errorf("machine: device state: %w", err)
		}
	}
	b = append(b, byte(len(d.Virtio)))
	for i := range d.Virtio {
		t := &d.Virtio[i]
		if len(t.Failure) > virtio.MaxFailureText || len(t.Queues) > virtio.MaxStateQueues || len(t.Device) > virtio.MaxDeviceState {
			return nil, fmt.Errorf("machine: virtio device %d: state beyond the format's bounds", i)
		}
		fixed := transportFixed{t.DeviceType, t.DeviceFeaturesSel, t.DriverFeaturesSel, t.DriverFeatures,
			t.QueueSel, t.Status, t.InterruptStatus, t.ConfigGeneration, t.Activated}
		if b, err = binary.Append(b, le, &fixed); err != nil {
			return nil, err
		}
		b = appendString16(b, t.Failure)
		b = le.AppendUint16(b, uint16(len(t.Queues)))
		if b, err = binary.Append(b, le, t.Queues); err != nil {
			return nil, err
		}
		b = le.AppendUint16(b, uint16(len(t.Device)))
		b = append(b, t.Device...)
	}
	return b, nil
}

// maxMachine bounds the machine record: the largest vCPU state and every
// virtio transport at its bounds, with room to spare.
var maxMachine = 64 + vm.MaxCPUStateSize + 4096 +
	maxVirtio*(64+virtio.MaxFailureText+virtio.MaxStateQueues*64+virtio.MaxDeviceState)

func decodeMachine(p []byte) (vm.MachineState, error) {
	r := fieldReader{b: p, what: "machine"}
	var s vm.MachineState
	s.Exit = r.u64()
	gt := r.u64()
	if gt > 1<<63-1 {
		return s, fmt.Errorf("machine: guest time %d ns is negative", int64(gt))
	}
	s.GuestTime = time.Duration(gt)
	cpuLen := r.u32()
	if r.err == nil && cpuLen > uint32(vm.MaxCPUStateSize) {
		return s, fmt.Errorf("machine: vCPU state of %d bytes, at most %d", cpuLen, vm.MaxCPUStateSize)
	}
	if cpu := r.bytes(int(cpuLen)); r.err == nil {
		if err := s.CPU.UnmarshalBinary(cpu); err != nil {
			return s, fmt.Errorf("machine: %w", err)
		}
	}
	d := &s.Devices
	for _, v := range []any{&d.PIC, &d.PIT, &d.PortB, &d.UART, &d.RTC, &d.PM, &d.Legacy} {
		r.fixed(v)
	}
	nv := int(r.u8())
	if r.err == nil && nv > maxVirtio {
		return s, fmt.Errorf("machine: %d virtio devices, at most %d", nv, maxVirtio)
	}
	for i := 0; i < nv && r.err == nil; i++ {
		var fixed transportFixed
		r.fixed(&fixed)
		t := virtio.TransportState{
			DeviceType: fixed.DeviceType, DeviceFeaturesSel: fixed.DeviceFeaturesSel,
			DriverFeaturesSel: fixed.DriverFeaturesSel, DriverFeatures: fixed.DriverFeatures,
			QueueSel: fixed.QueueSel, Status: fixed.Status, InterruptStatus: fixed.InterruptStatus,
			ConfigGeneration: fixed.ConfigGeneration, Activated: fixed.Activated,
		}
		t.Failure = r.string16(virtio.MaxFailureText)
		nq := r.count16(virtio.MaxStateQueues, binary.Size(virtio.QueueState{}))
		if r.err == nil {
			t.Queues = make([]virtio.QueueState, nq)
			r.fixed(t.Queues)
		}
		nd := r.count16(virtio.MaxDeviceState, 1)
		if dev := r.bytes(nd); r.err == nil && nd > 0 {
			t.Device = append([]byte(nil), dev...)
		}
		d.Virtio = append(d.Virtio, t)
	}
	if err := r.finish(); err != nil {
		return s, err
	}
	// The fixed models can be checked without a machine; the virtio
	// transports check theirs against the restoring machine's memory.
	if err := d.PIC.Validate(); err != nil {
		return s, fmt.Errorf("machine: %w", err)
	}
	for _, err := range []error{d.PIT.Validate(), d.PortB.Validate(), d.UART.Validate(),
		d.RTC.Validate(), d.PM.Validate(), d.Legacy.Validate()} {
		if err != nil {
			return s, fmt.Errorf("machine: %w", err)
		}
	}
	return s, nil
}

// fieldReader reads little-endian fields from a record's payload; the first
// read past the end records an error, and every later read returns zero.
type fieldReader struct {
	b    []byte
	off  int
	what string
	err  error
}

func (r *fieldReader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b)-r.off < n {
		r.err = fmt.Errorf("%s record truncated at byte %d: %d more bytes needed, %d left", r.what, r.off, n, len(r.b)-r.off)
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *fieldReader) u8() uint8 {
	if p := r.bytes(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *fieldReader) u16() uint16 {
	if p := r.bytes(2); p != nil {
		return le.Uint16(p)
	}
	return 0
}

func (r *fieldReader) u32() uint32 {
	if p := r.bytes(4); p != nil {
		return le.Uint32(p)
	}
	return 0
}

func (r *fieldReader) u64() uint64 {
	if p := r.bytes(8); p != nil {
		return le.Uint64(p)
	}
	return 0
}

// count16 reads a count of items of at least minSize bytes each, refusing
// more than max or more than the rest of the payload could hold, so a
// caller may allocate that many.
func (r *fieldReader) count16(max, minSize int) int {
	n := int(r.u16())
	if r.err != nil {
		return 0
	}
	if n > max {
		r.err = fmt.Errorf("%s record: %d items at byte %d, at most %d", r.what, n, r.off, max)
		return 0
	}
	if n*minSize > len(r.b)-r.off {
		r.err = fmt.Errorf("%s record truncated at byte %d: %d items need %d bytes, %d left", r.what, r.off, n, n*minSize, len(r.b)-r.off)
		return 0
	}
	return n
}

func (r *fieldReader) string16(max int) string {
	n := r.count16(max, 1)
	return string(r.bytes(n))
}

// fixed decodes a fixed-size value (a struct or slice of them).
func (r *fieldReader) fixed(v any) {
	p := r.bytes(binary.Size(v))
	if p == nil {
		return
	}
	if _, err := binary.Decode(p, le, v); err != nil {
		r.err = fmt.Errorf("%s record at byte %d: %w", r.what, r.off-len(p), err)
	}
}

// finish refuses a payload with bytes after its last field.
func (r *fieldReader) finish() error {
	if r.err == nil && r.off != len(r.b) {
		r.err = fmt.Errorf("%s record: %d bytes after its last field", r.what, len(r.b)-r.off)
	}
	return r.err
}
