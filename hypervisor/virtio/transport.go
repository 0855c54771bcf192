package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ftvm/ftvm/hypervisor/devices"
)

// virtio-mmio register offsets, version 2 (virtio 1.1 §4.2.2).
const (
	regMagicValue        = 0x000
	regVersion           = 0x004
	regDeviceID          = 0x008
	regVendorID          = 0x00c
	regDeviceFeatures    = 0x010
	regDeviceFeaturesSel = 0x014
	regDriverFeatures    = 0x020
	regDriverFeaturesSel = 0x024
	regQueueSel          = 0x030
	regQueueNumMax       = 0x034
	regQueueNum          = 0x038
	regQueueReady        = 0x044
	regQueueNotify       = 0x050
	regInterruptStatus   = 0x060
	regInterruptACK      = 0x064
	regStatus            = 0x070
	regQueueDescLow      = 0x080
	regQueueDescHigh     = 0x084
	regQueueDriverLow    = 0x090
	regQueueDriverHigh   = 0x094
	regQueueDeviceLow    = 0x0a0
	regQueueDeviceHigh   = 0x0a4
	regConfigGeneration  = 0x0fc
	regConfig            = 0x100
)

const (
	// MagicValue is "virt" little endian.
	MagicValue uint32 = 0x74726976
	// MMIOVersion is the modern (virtio 1.x) register layout.
	MMIOVersion uint32 = 2
	// VendorID is "FTVM" little endian ("MVTF" as ASCII bytes).
	VendorID uint32 = 0x4654564d
)

// transportFeatures are offered for every device.
const transportFeatures = 1<<FeatureVersion1 | 1<<FeatureEventIdx | 1<<FeatureIndirectDesc

// TransportConfig places a Transport on the machine.
type TransportConfig struct {
	Base    uint64          // guest-physical base of the register block (devices.VirtioMMIOBase + n*devices.VirtioMMIOSize)
	IRQ     uint8           // ISA line (devices.VirtioIRQs[n])
	IRQSink devices.IRQSink // the PIC
	Memory  *Memory         // guest RAM
	Logger  *slog.Logger    // nil: slog.Default()
}

// Transport is a virtio-mmio register block (version 2) in front of one
// Device; it implements devices.MMIODevice. It owns the device status
// state machine, feature negotiation, the device's Queues and the
// interrupt line.
//
// Interrupts: ftvm's 8259 latches these ISA lines on the rising edge, and
// InterruptStatus may already be non-zero when a new event arrives (the
// driver has not ACKed the last one yet). So on every new interrupt
// condition the transport pulses the line low then high, which gives the
// PIC a fresh edge even if the line was already high, and keeps it high
// until the driver's InterruptACK clears every InterruptStatus bit, then
// lowers it. At worst the guest sees a spurious interrupt with status 0;
// it never misses one. Holding the line while status is non-zero is also
// what a level-triggered input (if the guest sets the ELCR) expects.
type Transport struct {
	dev  Device
	cfg  TransportConfig
	log  *slog.Logger
	sig  signaller
	qs   []*Queue
	offr uint64 // features offered to the driver

	deviceFeaturesSel uint32
	driverFeaturesSel uint32
	driverFeatures    uint64
	queueSel          uint32
	status            uint32
	interruptStatus   uint32
	configGeneration  uint32
	activated         bool
	failErr           error
}

// NewTransport wraps dev. It fails if dev's queue sizes are invalid.
func NewTransport(dev Device, cfg TransportConfig) (*Transport, error) {
	if cfg.Memory == nil || cfg.IRQSink == nil {
		return nil, errors.New("virtio: transport needs Memory and IRQSink")
	}
	if cfg.Base%4 != 0 {
		return nil, fmt.Errorf("virtio: transport base %#x not 4-byte aligned", cfg.Base)
	}
	t := &Transport{dev: dev, cfg: cfg, log: cfg.Logger}
	if t.log == nil {
		t.log = slog.Default()
	}
	t.sig = signaller{t}
	sizes := dev.QueueMaxSizes()
	if len(sizes) == 0 {
		return nil, fmt.Errorf("virtio: device type %d has no queues", dev.Type())
	}
	for i, n := range sizes {
		if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
			return nil, fmt.Errorf("virtio: device type %d queue %d: max size %d is not a power of two in 1..%d",
				dev.Type(), i, n, MaxQueueSize)
		}
		t.qs = append(t.qs, newQueue(i, n, t.fail))
	}
	t.offr = dev.Features() | transportFeatures
	return t, nil
}

// Base is the guest-physical address of the register block.
func (t *Transport) Base() uint64 { return t.cfg.Base }

// IRQ is the transport's interrupt line.
func (t *Transport) IRQ() uint8 { return t.cfg.IRQ }

// CmdlineParam is the kernel command-line parameter that makes Linux
// find this device: virtio_mmio.device=<size>@<base>:<irq>.
func (t *Transport) CmdlineParam() string {
	return fmt.Sprintf("virtio_mmio.device=%#x@%#x:%d", devices.VirtioMMIOSize, t.cfg.Base, t.cfg.IRQ)
}

// Failed reports whether malformed driver behaviour (or a device error)
// has failed the device, and the first such error.
func (t *Transport) Failed() (bool, error) { return t.failErr != nil, t.failErr }

// Status is the device status register.
func (t *Transport) Status() uint32 { return t.status }

// Reset is a device reset, as if the driver wrote 0 to Status: the device
// is reset, queues and negotiated features are forgotten, interrupts are
// cleared and the line lowered, and a failure is cleared.
func (t *Transport) Reset() {
	t.dev.Reset()
	for _, q := range t.qs {
		q.reset()
	}
	t.deviceFeaturesSel, t.driverFeaturesSel, t.driverFeatures, t.queueSel = 0, 0, 0, 0
	t.status, t.activated, t.failErr = 0, false, nil
	if t.interruptStatus != 0 {
		t.interruptStatus = 0
		t.cfg.IRQSink.SetIRQ(t.cfg.IRQ, false)
	}
}

// ReadMMIO implements devices.MMIODevice. Registers below 0x100 answer
// only aligned 32-bit reads (§4.2.2.2: the driver MUST use them); other
// accesses read as zero. Config space takes any width.
func (t *Transport) ReadMMIO(addr uint64, data []byte) {
	clear(data)
	off := addr - t.cfg.Base
	if addr < t.cfg.Base || off >= devices.VirtioMMIOSize {
		return
	}
	if off >= regConfig {
		t.dev.ReadConfig(off-regConfig, data)
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return
	}
	binary.LittleEndian.PutUint32(data, t.readReg(off))
}

// WriteMMIO implements devices.MMIODevice; see ReadMMIO for widths.
func (t *Transport) WriteMMIO(addr uint64, data []byte) {
	off := addr - t.cfg.Base
	if addr < t.cfg.Base || off >= devices.VirtioMMIOSize {
		return
	}
	if off >= regConfig {
		t.dev.WriteConfig(off-regConfig, data)
		return
	}
	if len(data) != 4 || off%4 != 0 {
		t.log.Debug("virtio-mmio: ignored unaligned or non-32-bit register write",
			"base", t.cfg.Base, "offset", off, "len", len(data))
		return
	}
	t.writeReg(off, binary.LittleEndian.Uint32(data))
}

func (t *Transport) selected() *Queue {
	if t.queueSel < uint32(len(t.qs)) {
		return t.qs[t.queueSel]
	}
	return nil
}

func (t *Transport) readReg(off uint64) uint32 {
	q := t.selected()
	switch off {
	case regMagicValue:
		return MagicValue
	case regVersion:
		return MMIOVersion
	case regDeviceID:
		return t.dev.Type()
	case regVendorID:
		return VendorID
	case regDeviceFeatures:
		if t.deviceFeaturesSel < 2 {
			return uint32(t.offr >> (32 * t.deviceFeaturesSel))
		}
	case regDeviceFeaturesSel:
		return t.deviceFeaturesSel
	case regDriverFeaturesSel:
		return t.driverFeaturesSel
	case regQueueSel:
		return t.queueSel
	case regQueueNumMax:
		if q != nil {
			return uint32(q.maxSize)
		}
	case regQueueNum:
		if q != nil {
			return uint32(q.size)
		}
	case regQueueReady:
		if q != nil && q.ready {
			return 1
		}
	case regInterruptStatus:
		return t.interruptStatus
	case regStatus:
		return t.status
	case regQueueDescLow, regQueueDescHigh, regQueueDriverLow, regQueueDriverHigh, regQueueDeviceLow, regQueueDeviceHigh:
		if q != nil {
			return uint32(*t.queueAddr(q, off) >> (32 * (off & 4 >> 2)))
		}
	case regConfigGeneration:
		return t.configGeneration
	}
	return 0
}

// queueAddr is the ring address a QueueDesc/Driver/Device register
// half addresses.
func (t *Transport) queueAddr(q *Queue, off uint64) *uint64 {
	switch off &^ 4 {
	case regQueueDescLow:
		return &q.descAddr
	case regQueueDriverLow:
		return &q.driverAddr
	default:
		return &q.devAddr
	}
}

// queueConfigurable: the spec has the driver set a queue up after
// FEATURES_OK and before DRIVER_OK, while QueueReady is 0. Writes
// outside that window are ignored rather than half-applied.
func (t *Transport) queueConfigurable(q *Queue) bool {
	return q != nil && !q.ready && t.status&StatusDriverOK == 0 && t.failErr == nil
}

func (t *Transport) writeReg(off uint64, v uint32) {
	q := t.selected()
	switch off {
	case regDeviceFeaturesSel:
		t.deviceFeaturesSel = v
	case regDriverFeatures:
		// Features are fixed once FEATURES_OK is set.
		if t.status&StatusFeaturesOK == 0 && t.driverFeaturesSel < 2 {
			shift := 32 * t.driverFeaturesSel
			t.driverFeatures = t.driverFeatures&^(0xffffffff<<shift) | uint64(v)<<shift
		}
	case regDriverFeaturesSel:
		t.driverFeaturesSel = v
	case regQueueSel:
		t.queueSel = v
	case regQueueNum:
		if t.queueConfigurable(q) {
			// Validated when the driver sets QueueReady.
			if v > MaxQueueSize {
				v = 0 // do not truncate an invalid size into a valid one
			}
			q.size = uint16(v)
		}
	case regQueueDescLow, regQueueDescHigh, regQueueDriverLow, regQueueDriverHigh, regQueueDeviceLow, regQueueDeviceHigh:
		if t.queueConfigurable(q) {
			a := t.queueAddr(q, off)
			shift := 32 * (off & 4 >> 2)
			*a = *a&^(0xffffffff<<shift) | uint64(v)<<shift
		}
	case regQueueReady:
		t.writeQueueReady(q, v)
	case regQueueNotify:
		t.notify(v)
	case regInterruptACK:
		t.interruptStatus &^= v
		if t.interruptStatus == 0 {
			t.cfg.IRQSink.SetIRQ(t.cfg.IRQ, false)
		}
	case regStatus:
		t.writeStatus(v)
	default:
		t.log.Debug("virtio-mmio: write to read-only or unknown register",
			"base", t.cfg.Base, "offset", off, "value", v)
	}
}

func (t *Transport) writeQueueReady(q *Queue, v uint32) {
	if q == nil {
		return
	}
	if v&1 == 0 {
		// Linux clears QueueReady when it deletes a queue and reads
		// it back expecting 0.
		q.disable()
		return
	}
	if q.ready || !t.queueConfigurable(q) || t.status&StatusFeaturesOK == 0 {
		t.log.Debug("virtio-mmio: QueueReady ignored outside queue setup",
			"base", t.cfg.Base, "queue", q.index, "status", t.status)
		return
	}
	f := t.driverFeatures
	_ = q.enable(t.cfg.Memory, f&(1<<FeatureIndirectDesc) != 0, f&(1<<FeatureEventIdx) != 0)
}

func (t *Transport) notify(v uint32) {
	if !t.activated || t.failErr != nil {
		return
	}
	if v >= uint32(len(t.qs)) || !t.qs[v].Ready() {
		t.log.Debug("virtio-mmio: notify for a queue that is not ready", "base", t.cfg.Base, "queue", v)
		return
	}
	if err := t.dev.Notify(int(v)); err != nil {
		t.fail(err)
	}
}

func (t *Transport) writeStatus(v uint32) {
	if v == 0 {
		t.Reset()
		return
	}
	// DEVICE_NEEDS_RESET belongs to the device; the driver writes back
	// what it read, so neither its presence nor absence means anything.
	v &^= StatusDeviceNeedsReset
	keep := t.status & StatusDeviceNeedsReset
	old := t.status &^ StatusDeviceNeedsReset
	if old&^v != 0 {
		t.log.Warn("virtio-mmio: driver cleared status bits without a reset; ignored",
			"base", t.cfg.Base, "status", old, "written", v)
		return
	}
	added := v &^ old
	if added&StatusFeaturesOK != 0 {
		if err := t.checkFeatures(v); err != nil {
			// The driver reads Status back and sees FEATURES_OK
			// missing (§3.1.1 step 6): it then gives up.
			t.log.Info("virtio-mmio: FEATURES_OK refused", "base", t.cfg.Base, "err", err)
			v &^= StatusFeaturesOK
		}
	}
	if added&StatusDriverOK != 0 && v&StatusFeaturesOK == 0 {
		t.log.Info("virtio-mmio: DRIVER_OK without FEATURES_OK refused", "base", t.cfg.Base)
		v &^= StatusDriverOK
	}
	t.status = v | keep
	if added&StatusDriverOK != 0 && v&StatusDriverOK != 0 && t.failErr == nil {
		t.activated = true
		if err := t.dev.Activate(t.driverFeatures, t.qs, t.cfg.Memory, t.sig); err != nil {
			t.fail(err)
		}
	}
}

func (t *Transport) checkFeatures(status uint32) error {
	if status&(StatusAcknowledge|StatusDriver) != StatusAcknowledge|StatusDriver {
		return errors.New("ACKNOWLEDGE and DRIVER not set")
	}
	if extra := t.driverFeatures &^ t.offr; extra != 0 {
		return fmt.Errorf("driver accepted features %#x the device did not offer", extra)
	}
	if t.driverFeatures&(1<<FeatureVersion1) == 0 {
		return errors.New("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")
	}
	return nil
}

// fail puts the device in the failed state once: DEVICE_NEEDS_RESET, all
// queues stopped, one log line, a config-change interrupt.
func (t *Transport) fail(err error) {
	if t.failErr != nil {
		return
	}
	t.failErr = err
	for _, q := range t.qs {
		if q.err == nil {
			q.err = err
		}
	}
	t.status |= StatusDeviceNeedsReset
	attrs := []any{"base", t.cfg.Base, "device", t.dev.Type()}
	var qe *QueueError
	if errors.As(err, &qe) {
		attrs = append(attrs, "queue", qe.Queue, "desc", qe.Desc, "problem", qe.Problem)
	} else {
		attrs = append(attrs, "err", err)
	}
	t.log.Error("virtio device failed: needs reset", attrs...)
	t.raise(InterruptConfigChange)
}

// raise sets an InterruptStatus bit and pulses the line (see Transport).
func (t *Transport) raise(bit uint32) {
	t.interruptStatus |= bit
	t.cfg.IRQSink.SetIRQ(t.cfg.IRQ, false)
	t.cfg.IRQSink.SetIRQ(t.cfg.IRQ, true)
}

// signaller is the Signaller handed to the device, kept off Transport's
// method set.
type signaller struct{ t *Transport }

func (s signaller) UsedBuffers(q int) {
	t := s.t
	if t.failErr != nil || q < 0 || q >= len(t.qs) {
		return
	}
	if t.qs[q].NeedsInterrupt() {
		t.raise(InterruptUsedBuffer)
	}
}

func (s signaller) ConfigChanged() {
	s.t.configGeneration++
	s.t.raise(InterruptConfigChange)
}

func (s signaller) Fail(err error) { s.t.fail(err) }
