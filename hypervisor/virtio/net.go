package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
)

// virtio-net (virtio 1.1 §5.1).
const (
	// NetFeatureMAC: the device has a MAC address in config space.
	NetFeatureMAC = 5 // VIRTIO_NET_F_MAC
	// NetFeatureStatus: config space has a link status field.
	NetFeatureStatus = 16 // VIRTIO_NET_F_STATUS

	// NetLinkUp is VIRTIO_NET_S_LINK_UP in the config status field.
	NetLinkUp uint16 = 1

	// NetHeaderSize is struct virtio_net_hdr_v1 (flags, gso_type,
	// hdr_len, gso_size, csum_start, csum_offset, num_buffers). With
	// VIRTIO_F_VERSION_1 every buffer starts with all 12 bytes, with or
	// without VIRTIO_NET_F_MRG_RXBUF (§5.1.6).
	NetHeaderSize = 12

	// NetMinFrame is an Ethernet header: anything shorter is not a frame.
	NetMinFrame = 14
	// NetMaxFrame bounds a frame in either direction: a 64 KiB packet plus
	// a VLAN-tagged Ethernet header. The same bound as the host side's
	// frame stream (network.MaxFrameSize), repeated here because the
	// hypervisor must not import the network package.
	NetMaxFrame = 65550

	// NetDefaultQueueSize is each queue's QueueNumMax unless configured.
	NetDefaultQueueSize = 256

	netRxQueue = 0
	netTxQueue = 1

	// netConfigSize is the config space this device exposes: mac[6] and
	// status (le16). max_virtqueue_pairs and mtu need features we do not
	// offer, and read as zero.
	netConfigSize = 8
)

// NetConfig configures a virtio-net device.
type NetConfig struct {
	// MAC is the guest's fixed address (from the VM config), offered with
	// VIRTIO_NET_F_MAC so the guest's MAC, and so its DHCP lease, is
	// stable across boots and across failover.
	MAC net.HardwareAddr
	// Transmit receives each frame the guest sends, Ethernet header first,
	// without the virtio header. It is called on the vCPU loop, inside
	// the guest's notify, and frame is only valid during the call (it is
	// the device's scratch buffer): keep a copy if needed. The VMM wraps
	// its port here with the output rule (the frame is held until the
	// backup has the log up to this exit).
	Transmit func(frame []byte)
	// RxRefilled, if set, is called on the vCPU loop when the driver
	// notifies the receive queue, i.e. it has added receive buffers: the
	// moment to retry frames Receive could not place.
	RxRefilled func()
	// QueueSize is the QueueNumMax of both queues (a power of two);
	// default NetDefaultQueueSize.
	QueueSize uint16
	// Logger for dropped and malformed frames (debug level); default
	// slog.Default().
	Logger *slog.Logger
}

// NetStats counts a Net device's traffic. Read it on the vCPU loop.
type NetStats struct {
	TxFrames, TxBytes uint64
	// TxMalformed counts transmit chains returned without sending: shorter
	// than header plus an Ethernet header, or longer than NetMaxFrame.
	TxMalformed       uint64
	RxFrames, RxBytes uint64
	// RxNoBuffer counts Receive calls that found no receive buffer
	// (the frame stays with the caller).
	RxNoBuffer uint64
	// RxDropped counts frames Receive consumed without delivering: the
	// buffer the driver offered was too small, or the frame's size was
	// impossible.
	RxDropped uint64
}

// Net is a virtio-net device (type 1) with one receive queue (0) and one
// transmit queue (1), a fixed MAC and link status, and no offloads: every
// frame is a plain Ethernet frame behind a 12-byte virtio_net_hdr_v1 whose
// fields are zero except num_buffers = 1. Keeping out checksum and
// segmentation offloads keeps frames at MTU size, so each received frame
// fits one receive buffer and no feature changes what goes on the wire.
//
// Determinism: Net has no goroutines and touches guest memory only inside
// Notify (the guest's QueueNotify write) and Receive (called by the VMM at
// a synchronous exit), both on the vCPU loop.
type Net struct {
	mac        [6]byte
	transmit   func([]byte)
	rxRefilled func()
	qsize      uint16
	log        *slog.Logger

	status uint16 // config status field

	// Set by Activate, cleared by Reset.
	rx, tx *Queue
	sig    Signaller

	chain   Chain  // reused for every Pop: no allocation per frame
	scratch []byte // transmit frame buffer, grown on demand
	hdr     [NetHeaderSize]byte
	stats   NetStats
}

var _ Device = (*Net)(nil)

// NewNet creates a virtio-net device; wrap it in a Transport.
func NewNet(cfg NetConfig) (*Net, error) {
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("virtio-net: MAC %q is not 6 bytes", cfg.MAC)
	}
	if cfg.MAC[0]&1 != 0 {
		return nil, fmt.Errorf("virtio-net: MAC %s is a multicast address", cfg.MAC)
	}
	if cfg.Transmit == nil {
		return nil, errors.New("virtio-net: no Transmit function")
	}
	qs := cfg.QueueSize
	if qs == 0 {
		qs = NetDefaultQueueSize
	}
	if qs > MaxQueueSize || qs&(qs-1) != 0 {
		return nil, fmt.Errorf("virtio-net: queue size %d is not a power of two in 1..%d", qs, MaxQueueSize)
	}
	n := &Net{
		transmit:   cfg.Transmit,
		rxRefilled: cfg.RxRefilled,
		qsize:      qs,
		log:        cfg.Logger,
		status:     NetLinkUp,
	}
	copy(n.mac[:], cfg.MAC)
	if n.log == nil {
		n.log = slog.Default()
	}
	// num_buffers is always 1 (no MRG_RXBUF); the rest of the receive
	// header is zero: no checksum or GSO information to give.
	binary.LittleEndian.PutUint16(n.hdr[10:], 1)
	return n, nil
}

// Type implements Device.
func (n *Net) Type() uint32 { return DeviceNet }

// Features implements Device.
func (n *Net) Features() uint64 {
	return 1<<NetFeatureMAC | 1<<NetFeatureStatus
}

// QueueMaxSizes implements Device: receive and transmit.
func (n *Net) QueueMaxSizes() []uint16 { return []uint16{n.qsize, n.qsize} }

// ReadConfig implements Device: mac[6] then status.
func (n *Net) ReadConfig(offset uint64, data []byte) {
	var cfg [netConfigSize]byte
	copy(cfg[:6], n.mac[:])
	binary.LittleEndian.PutUint16(cfg[6:], n.status)
	clear(data)
	if offset < netConfigSize {
		copy(data, cfg[offset:])
	}
}

// WriteConfig implements Device. The MAC is read-only once
// VIRTIO_F_VERSION_1 is negotiated (§5.1.4.2) and so is status: writes are
// ignored.
func (n *Net) WriteConfig(offset uint64, data []byte) {
	n.log.Debug("virtio-net: ignored config write", "offset", offset, "len", len(data))
}

// Activate implements Device.
func (n *Net) Activate(features uint64, queues []*Queue, mem *Memory, signal Signaller) error {
	if len(queues) != 2 {
		return fmt.Errorf("virtio-net: activated with %d queues, want 2", len(queues))
	}
	n.rx, n.tx, n.sig = queues[netRxQueue], queues[netTxQueue], signal
	return nil
}

// Reset implements Device. Link status survives: it is the host's
// state, not the driver's.
func (n *Net) Reset() {
	n.rx, n.tx, n.sig = nil, nil, nil
	n.chain = Chain{}
}

// SetLink sets the link status the guest sees and, if it changed on an
// active device, raises a configuration-change interrupt. For the VMM to
// call on the vCPU loop (e.g. link down while a backup is not yet live).
func (n *Net) SetLink(up bool) {
	s := uint16(0)
	if up {
		s = NetLinkUp
	}
	if s == n.status {
		return
	}
	n.status = s
	if n.sig != nil {
		n.sig.ConfigChanged()
	}
}

// Notify implements Device: transmit on queue 1, receive-buffer refill on
// queue 0.
func (n *Net) Notify(q int) error {
	switch q {
	case netTxQueue:
		return n.drainTx()
	case netRxQueue:
		// Nothing to do with empty buffers until a frame arrives; the
		// VMM holds the frames, so tell it buffers are there.
		if n.rxRefilled != nil {
			n.rxRefilled()
		}
	}
	return nil
}

// drainTx sends every chain on the transmit queue. The loop ends because
// the guest is stopped while it runs: the ring holds at most the queue
// size of chains (Pending checks that).
func (n *Net) drainTx() error {
	if n.tx == nil {
		return nil
	}
	pushed := false
	for {
		ok, err := n.tx.PopInto(&n.chain)
		if err != nil {
			if pushed {
				n.sig.UsedBuffers(netTxQueue)
			}
			return err
		}
		if !ok {
			break
		}
		n.sendChain(&n.chain)
		n.tx.Push(n.chain.Head, 0)
		pushed = true
	}
	if pushed {
		n.sig.UsedBuffers(netTxQueue)
	}
	return nil
}

// sendChain hands one transmit chain's frame to Transmit. A chain the
// frame cannot be taken from is dropped and counted, not a device failure:
// a driver can legally queue a runt, and the wire would drop it too.
func (n *Net) sendChain(c *Chain) {
	if c.ReadableLen < NetHeaderSize+NetMinFrame || c.ReadableLen > NetHeaderSize+NetMaxFrame {
		n.stats.TxMalformed++
		n.log.Debug("virtio-net: dropped transmit chain of impossible length",
			"readable", c.ReadableLen, "min", NetHeaderSize+NetMinFrame, "max", NetHeaderSize+NetMaxFrame)
		return
	}
	size := int(c.ReadableLen) - NetHeaderSize
	if cap(n.scratch) < size {
		n.scratch = make([]byte, size)
	}
	frame := n.scratch[:size]
	// ReadAt walks the descriptors, so a header split across descriptors,
	// or a header sharing one with the frame, needs no special case. The
	// header itself is ignored: without offloads it carries nothing.
	if _, err := c.ReadAt(frame, NetHeaderSize); err != nil {
		n.stats.TxMalformed++ // cannot happen: ReadableLen was checked
		return
	}
	n.stats.TxFrames++
	n.stats.TxBytes += uint64(size)
	n.transmit(frame)
}

// Receive places one received frame (Ethernet header first) in the
// guest's next receive buffer and interrupts it. The VMM calls it at a
// synchronous exit, never from another goroutine.
//
// It returns false when the frame was not consumed: the device is not
// active, the receive queue is not ready or failed, or the driver has no
// buffer posted. The VMM keeps the frame and retries after RxRefilled (or
// at a later exit). It returns true when the frame was consumed: delivered,
// or dropped because it cannot be delivered at all (impossible size, or a
// buffer too small for it; the buffer is returned empty, as a NIC
// would count a length error), so it must not be retried.
func (n *Net) Receive(frame []byte) bool {
	if n.rx == nil || !n.rx.Ready() {
		n.stats.RxNoBuffer++
		return false
	}
	if len(frame) < NetMinFrame || len(frame) > NetMaxFrame {
		n.stats.RxDropped++
		n.log.Debug("virtio-net: dropped received frame of impossible length", "len", len(frame))
		return true
	}
	ok, err := n.rx.PopInto(&n.chain)
	if err != nil {
		// The queue failed and with it the device (the transport
		// logged it); the frame waits for a reset like any other.
		n.stats.RxNoBuffer++
		return false
	}
	if !ok {
		n.stats.RxNoBuffer++
		return false
	}
	c := &n.chain
	need := uint64(NetHeaderSize) + uint64(len(frame))
	if uint64(c.WritableLen) < need {
		n.stats.RxDropped++
		n.log.Debug("virtio-net: dropped received frame larger than the receive buffer",
			"frame", len(frame), "buffer", c.WritableLen)
		n.rx.Push(c.Head, 0)
		n.sig.UsedBuffers(netRxQueue)
		return true
	}
	// Both writes fit (checked above), so they cannot come up short.
	_, _ = c.WriteAt(n.hdr[:], 0)
	_, _ = c.WriteAt(frame, NetHeaderSize)
	n.rx.Push(c.Head, uint32(need))
	n.sig.UsedBuffers(netRxQueue)
	n.stats.RxFrames++
	n.stats.RxBytes += uint64(len(frame))
	return true
}

// Stats returns the device's counters.
func (n *Net) Stats() NetStats { return n.stats }

// MAC returns the device's MAC address.
func (n *Net) MAC() net.HardwareAddr { return append(net.HardwareAddr(nil), n.mac[:]...) }
