package vm

import (
	"fmt"
	"net"
	"strings"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// NetConfig gives the guest a virtio-net device. The VM does not know what
// is behind it (the embedded switch, a tap device, a replication layer):
// it sends through Transmit and receives from Received.
type NetConfig struct {
	// MAC is the guest's fixed address.
	MAC net.HardwareAddr
	// Transmit takes a frame the guest sent. It runs on the vCPU loop and
	// must not block; frame is valid only during the call.
	Transmit func(frame []byte)
	// Received carries frames for the guest. The VM hands them to the
	// guest only at VM exits (the determinism contract), in order.
	Received <-chan []byte
}

// DiskConfig gives the guest a virtio-blk device (vda, vdb, ... in order).
type DiskConfig struct {
	Backend  virtio.BlockBackend
	ReadOnly bool
}

// frameInbox holds received frames until the guest has receive buffers.
type frameInbox struct {
	dev     *virtio.Net
	source  <-chan []byte
	pending [][]byte
	drops   uint64
	// accepted, if set, is told each frame the device took (the recorder).
	accepted func(frame []byte)
}

// maxPendingFrames bounds what waits for receive buffers; beyond it frames
// are dropped, as a NIC with a full ring would.
const maxPendingFrames = 256

// deliver moves arrived frames into the guest while it has room.
func (f *frameInbox) deliver() {
	for more := true; more; {
		select {
		case fr, ok := <-f.source:
			if !ok {
				f.source = nil
				more = false
				break
			}
			f.queue(fr)
		default:
			more = false
		}
	}
	f.flush()
}

func (f *frameInbox) queue(fr []byte) {
	if len(f.pending) >= maxPendingFrames {
		f.drops++
		return
	}
	f.pending = append(f.pending, fr)
}

func (f *frameInbox) flush() {
	n := 0
	for n < len(f.pending) && f.dev.Receive(f.pending[n]) {
		if f.accepted != nil {
			f.accepted(f.pending[n])
		}
		n++
	}
	if n > 0 {
		f.pending = f.pending[:copy(f.pending, f.pending[n:])]
	}
}

// wireVirtio puts the configured virtio devices on the MMIO bus, one
// virtio-mmio slot each, and returns the kernel command-line parameters
// that tell Linux where they are.
func (v *VM) wireVirtio(pic devices.IRQSink) (string, error) {
	mem := virtio.NewMemory(v.mem.Bytes())
	if v.replicable() {
		mem.TrackDirty() // digests and checkpoints must see device writes
	}
	v.dma = mem
	var params []string
	slot := 0
	add := func(dev virtio.Device) error {
		if slot >= len(devices.VirtioIRQs) {
			return fmt.Errorf("too many virtio devices: at most %d", len(devices.VirtioIRQs))
		}
		t, err := virtio.NewTransport(dev, virtio.TransportConfig{
			Base:    devices.VirtioMMIOBase + uint64(slot)*devices.VirtioMMIOSize,
			IRQ:     devices.VirtioIRQs[slot],
			IRQSink: pic,
			Memory:  mem,
		})
		if err != nil {
			return err
		}
		if err := v.loop.mmioBus.register(t.Base(), devices.VirtioMMIOSize, t); err != nil {
			return err
		}
		params = append(params, t.CmdlineParam())
		v.models.virtio = append(v.models.virtio, t)
		slot++
		return nil
	}
	if n := v.cfg.Net; n != nil {
		inbox := &frameInbox{source: n.Received}
		l := v.loop
		// The mode is looked up per frame: see modalClock.
		transmit := func(fr []byte) {
			switch {
			case l.rep != nil:
				l.checkOutput(OutputFrame, 0, 0, fr)
			case l.rec != nil:
				n.Transmit(fr)
				l.rec.Output(l.syncExits, OutputFrame, 0, 0, fr)
				return
			}
			n.Transmit(fr)
		}
		dev, err := virtio.NewNet(virtio.NetConfig{MAC: n.MAC, Transmit: transmit, RxRefilled: func() { inbox.flush() }})
		if err != nil {
			return "", fmt.Errorf("virtio-net: %w", err)
		}
		inbox.dev = dev
		inbox.accepted = func(fr []byte) {
			if l.rec != nil {
				l.rec.FrameReceived(l.syncExits, 0, fr)
			}
		}
		v.loop.frames = inbox
		if err := add(dev); err != nil {
			return "", fmt.Errorf("virtio-net: %w", err)
		}
	}
	for i, d := range v.cfg.Disks {
		backend := &modalDisk{BlockBackend: d.Backend, l: v.loop, dev: i}
		dev, err := virtio.NewBlk(backend, virtio.BlkConfig{ReadOnly: d.ReadOnly})
		if err != nil {
			return "", fmt.Errorf("virtio-blk disk %d: %w", i, err)
		}
		if err := add(dev); err != nil {
			return "", fmt.Errorf("virtio-blk disk %d: %w", i, err)
		}
	}
	return strings.Join(params, " "), nil
}
