package virtio_test

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// This file drives virtio-net as a guest driver would, through the MMIO
// registers and rings in a fake guest RAM, using only the package's
// exported API. Register offsets are the spec's (virtio 1.1 §4.2.2).
const (
	netRegDeviceID        = 0x008
	netRegDeviceFeatures  = 0x010
	netRegDeviceFeatSel   = 0x014
	netRegDriverFeatures  = 0x020
	netRegDriverFeatSel   = 0x024
	netRegQueueSel        = 0x030
	netRegQueueNum        = 0x038
	netRegQueueReady      = 0x044
	netRegQueueNotify     = 0x050
	netRegInterruptStatus = 0x060
	netRegInterruptACK    = 0x064
	netRegStatus          = 0x070
	netRegQueueDescLow    = 0x080
	netRegQueueDriverLow  = 0x090
	netRegQueueDeviceLow  = 0x0a0
	netRegConfigGen       = 0x0fc
	netRegConfig          = 0x100

	netTestIRQ   = 5
	netQueueSize = 16
	netRAMSize   = 1 << 20
	netDataBase  = 0x10000 // buffers are allocated upwards from here

	descFNext  = 1
	descFWrite = 2
)

var netTestMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}

// netIRQ records the interrupt line: rising edges are what the PIC sees.
type netIRQ struct {
	high   bool
	rising int
}

func (s *netIRQ) SetIRQ(line uint8, high bool) {
	if high && !s.high {
		s.rising++
	}
	s.high = high
}

// netQueue is the driver's view of one virtqueue.
type netQueue struct {
	index             uint32
	desc, avail, used uint64
	nextDesc          uint16
	availIdx          uint16
}

type netDriver struct {
	t     *testing.T
	ram   []byte
	tr    *virtio.Transport
	dev   *virtio.Net
	irq   *netIRQ
	logs  *bytes.Buffer
	sent  [][]byte // frames Transmit received (copied)
	refil int      // RxRefilled calls
	rxq   *netQueue
	txq   *netQueue
	alloc uint64
}

func newNetDriver(t *testing.T) *netDriver {
	t.Helper()
	d := &netDriver{t: t, ram: make([]byte, netRAMSize), irq: &netIRQ{}, logs: &bytes.Buffer{}, alloc: netDataBase}
	log := slog.New(slog.NewTextHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dev, err := virtio.NewNet(virtio.NetConfig{
		MAC:        netTestMAC,
		Transmit:   func(f []byte) { d.sent = append(d.sent, append([]byte(nil), f...)) },
		RxRefilled: func() { d.refil++ },
		QueueSize:  netQueueSize,
		Logger:     log,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.dev = dev
	d.tr, err = virtio.NewTransport(dev, virtio.TransportConfig{
		Base: devices.VirtioMMIOBase, IRQ: netTestIRQ, IRQSink: d.irq,
		Memory: virtio.NewMemory(d.ram), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *netDriver) r32(off uint64) uint32 {
	var b [4]byte
	d.tr.ReadMMIO(devices.VirtioMMIOBase+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (d *netDriver) w32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.tr.WriteMMIO(devices.VirtioMMIOBase+off, b[:])
}

func (d *netDriver) features() uint64 {
	d.w32(netRegDeviceFeatSel, 0)
	lo := d.r32(netRegDeviceFeatures)
	d.w32(netRegDeviceFeatSel, 1)
	return uint64(d.r32(netRegDeviceFeatures))<<32 | uint64(lo)
}

// start negotiates features, sets up both queues and sets DRIVER_OK, the
// order Linux's virtio_mmio uses.
func (d *netDriver) start(features uint64) {
	d.t.Helper()
	d.w32(netRegStatus, uint32(virtio.StatusAcknowledge))
	d.w32(netRegStatus, uint32(virtio.StatusAcknowledge|virtio.StatusDriver))
	d.w32(netRegDriverFeatSel, 0)
	d.w32(netRegDriverFeatures, uint32(features))
	d.w32(netRegDriverFeatSel, 1)
	d.w32(netRegDriverFeatures, uint32(features>>32))
	st := virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK
	d.w32(netRegStatus, st)
	if d.r32(netRegStatus)&virtio.StatusFeaturesOK == 0 {
		d.t.Fatalf("FEATURES_OK refused for %#x; log:\n%s", features, d.logs)
	}
	d.rxq = d.setupQueue(0, 0x1000)
	d.txq = d.setupQueue(1, 0x4000)
	d.w32(netRegStatus, st|virtio.StatusDriverOK)
	if ok, err := d.tr.Failed(); ok {
		d.t.Fatalf("device failed at DRIVER_OK: %v", err)
	}
}

func (d *netDriver) setupQueue(i uint32, base uint64) *netQueue {
	q := &netQueue{index: i, desc: base, avail: base + 0x1000, used: base + 0x2000}
	d.w32(netRegQueueSel, i)
	d.w32(netRegQueueNum, netQueueSize)
	for off, a := range map[uint64]uint64{netRegQueueDescLow: q.desc, netRegQueueDriverLow: q.avail, netRegQueueDeviceLow: q.used} {
		d.w32(off, uint32(a))
		d.w32(off+4, uint32(a>>32))
	}
	d.w32(netRegQueueReady, 1)
	return q
}

// netBuf is one descriptor of a chain: guest address, length, and whether
// it is device-writable.
type netBuf struct {
	addr  uint64
	len   uint32
	write bool
}

// buf allocates guest memory for data (or n zero bytes) and describes it.
func (d *netDriver) buf(data []byte, n int, write bool) netBuf {
	if data != nil {
		n = len(data)
	}
	a := d.alloc
	d.alloc += uint64(n+15) &^ 15
	copy(d.ram[a:], data)
	return netBuf{addr: a, len: uint32(n), write: write}
}

// addChain writes the descriptors and publishes the chain in the
// available ring.
func (d *netDriver) addChain(q *netQueue, bufs ...netBuf) uint16 {
	head := q.nextDesc
	for i, b := range bufs {
		idx := q.nextDesc
		q.nextDesc = (q.nextDesc + 1) % netQueueSize
		var flags uint16
		if b.write {
			flags |= descFWrite
		}
		if i < len(bufs)-1 {
			flags |= descFNext
		}
		e := d.ram[q.desc+16*uint64(idx):]
		binary.LittleEndian.PutUint64(e[0:], b.addr)
		binary.LittleEndian.PutUint32(e[8:], b.len)
		binary.LittleEndian.PutUint16(e[12:], flags)
		binary.LittleEndian.PutUint16(e[14:], q.nextDesc)
	}
	binary.LittleEndian.PutUint16(d.ram[q.avail+4+2*uint64(q.availIdx%netQueueSize):], head)
	q.availIdx++
	binary.LittleEndian.PutUint16(d.ram[q.avail+2:], q.availIdx)
	return head
}

func (d *netDriver) kick(q *netQueue) { d.w32(netRegQueueNotify, q.index) }

func (d *netDriver) usedIdx(q *netQueue) uint16 {
	return binary.LittleEndian.Uint16(d.ram[q.used+2:])
}

func (d *netDriver) usedElem(q *netQueue, i uint16) (id, length uint32) {
	e := d.ram[q.used+4+8*uint64(i%netQueueSize):]
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
}

// ack reads and acknowledges the interrupt status, as the guest's handler
// does.
func (d *netDriver) ack() uint32 {
	s := d.r32(netRegInterruptStatus)
	d.w32(netRegInterruptACK, s)
	return s
}

func (d *netDriver) expectHealthy() {
	d.t.Helper()
	if ok, err := d.tr.Failed(); ok {
		d.t.Fatalf("device failed: %v\nlog:\n%s", err, d.logs)
	}
}

const netDriverFeatures = 1<<virtio.NetFeatureMAC | 1<<virtio.NetFeatureStatus | 1<<virtio.FeatureVersion1

// testFrame is an Ethernet frame with a recognisable body.
func testFrame(n int, seed byte) []byte {
	f := make([]byte, n)
	copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:], netTestMAC)
	f[12], f[13] = 0x88, 0xb5 // local experimental EtherType
	for i := 14; i < n; i++ {
		f[i] = seed + byte(i*7)
	}
	return f
}

func TestNetIdentityAndConfig(t *testing.T) {
	d := newNetDriver(t)
	if got := d.r32(netRegDeviceID); got != virtio.DeviceNet {
		t.Errorf("DeviceID = %d, want %d", got, virtio.DeviceNet)
	}
	f := d.features()
	for _, bit := range []int{virtio.NetFeatureMAC, virtio.NetFeatureStatus, virtio.FeatureVersion1} {
		if f&(1<<bit) == 0 {
			t.Errorf("feature bit %d not offered (features %#x)", bit, f)
		}
	}
	// No offloads: CSUM(0), GUEST_CSUM(1), GUEST_TSO4(7), HOST_TSO4(11),
	// MRG_RXBUF(15), CTRL_VQ(17).
	for _, bit := range []int{0, 1, 7, 11, 15, 17} {
		if f&(1<<bit) != 0 {
			t.Errorf("feature bit %d offered, want no offloads (features %#x)", bit, f)
		}
	}
	// Config space at any access width: mac[6], status le16.
	cfg := make([]byte, 8)
	for i := range cfg {
		d.tr.ReadMMIO(devices.VirtioMMIOBase+netRegConfig+uint64(i), cfg[i:i+1])
	}
	want := append(append([]byte(nil), netTestMAC...), 1, 0)
	if !bytes.Equal(cfg, want) {
		t.Errorf("config bytes = % x, want % x", cfg, want)
	}
	var st [2]byte
	d.tr.ReadMMIO(devices.VirtioMMIOBase+netRegConfig+6, st[:])
	if binary.LittleEndian.Uint16(st[:]) != virtio.NetLinkUp {
		t.Errorf("status = %x, want link up", st)
	}
	var past [4]byte
	d.tr.ReadMMIO(devices.VirtioMMIOBase+netRegConfig+8, past[:])
	if past != [4]byte{} {
		t.Errorf("config past the end = % x, want zeros", past)
	}
	// The MAC is read-only.
	d.tr.WriteMMIO(devices.VirtioMMIOBase+netRegConfig, []byte{1, 2, 3, 4})
	if got := d.dev.MAC(); !bytes.Equal(got, netTestMAC) {
		t.Errorf("MAC after config write = %s", got)
	}
}

func TestNewNetRejectsBadConfig(t *testing.T) {
	tx := func([]byte) {}
	for name, cfg := range map[string]virtio.NetConfig{
		"short MAC":      {MAC: netTestMAC[:5], Transmit: tx},
		"multicast MAC":  {MAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}, Transmit: tx},
		"no transmit":    {MAC: netTestMAC},
		"bad queue size": {MAC: netTestMAC, Transmit: tx, QueueSize: 100},
	} {
		if _, err := virtio.NewNet(cfg); err == nil {
			t.Errorf("%s: NewNet succeeded", name)
		} else if !strings.Contains(err.Error(), "virtio-net") {
			t.Errorf("%s: error %q does not name the device", name, err)
		}
	}
}

func TestNetTransmit(t *testing.T) {
	d := newNetDriver(t)
	d.start(netDriverFeatures)
	hdr := make([]byte, virtio.NetHeaderSize)
	f1, f2, f3 := testFrame(60, 1), testFrame(1514, 2), testFrame(300, 3)

	// Header and frame in one descriptor (Linux with any_header_sg).
	d.addChain(d.txq, d.buf(append(append([]byte(nil), hdr...), f1...), 0, false))
	// Header in its own descriptor, frame in two.
	d.addChain(d.txq, d.buf(hdr, 0, false), d.buf(f2[:100], 0, false), d.buf(f2[100:], 0, false))
	// Header split across descriptors, the second also holding frame bytes.
	d.addChain(d.txq, d.buf(hdr[:5], 0, false), d.buf(append(append([]byte(nil), hdr[5:]...), f3[:10]...), 0, false), d.buf(f3[10:], 0, false))
	d.kick(d.txq)
	d.expectHealthy()

	if len(d.sent) != 3 {
		t.Fatalf("sent %d frames, want 3", len(d.sent))
	}
	for i, want := range [][]byte{f1, f2, f3} {
		if !bytes.Equal(d.sent[i], want) {
			t.Errorf("frame %d: got %d bytes, want %d (byte-exact)", i, len(d.sent[i]), len(want))
		}
	}
	if got := d.usedIdx(d.txq); got != 3 {
		t.Fatalf("used idx = %d, want 3", got)
	}
	for i := range uint16(3) {
		if _, l := d.usedElem(d.txq, i); l != 0 {
			t.Errorf("used[%d].len = %d, want 0 for a transmit chain", i, l)
		}
	}
	if d.irq.rising == 0 || d.ack()&virtio.InterruptUsedBuffer == 0 {
		t.Errorf("no used-buffer interrupt after transmit")
	}
	s := d.dev.Stats()
	if s.TxFrames != 3 || s.TxBytes != uint64(len(f1)+len(f2)+len(f3)) || s.TxMalformed != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestNetTransmitMalformedChainsAreDropped(t *testing.T) {
	d := newNetDriver(t)
	d.start(netDriverFeatures)
	d.addChain(d.txq, d.buf(nil, 10, false))                      // shorter than the header
	d.addChain(d.txq, d.buf(nil, virtio.NetHeaderSize, false))    // header, no frame
	d.addChain(d.txq, d.buf(nil, virtio.NetHeaderSize+13, false)) // runt frame
	d.addChain(d.txq, d.buf(nil, virtio.NetHeaderSize+60, true))  // only device-writable
	good := testFrame(64, 9)
	d.addChain(d.txq, d.buf(make([]byte, virtio.NetHeaderSize), 0, false), d.buf(good, 0, false))
	d.kick(d.txq)
	d.expectHealthy()
	if len(d.sent) != 1 || !bytes.Equal(d.sent[0], good) {
		t.Fatalf("sent %d frames, want only the good one", len(d.sent))
	}
	if got := d.usedIdx(d.txq); got != 5 {
		t.Errorf("used idx = %d, want every chain returned (5)", got)
	}
	if s := d.dev.Stats(); s.TxMalformed != 4 {
		t.Errorf("TxMalformed = %d, want 4", s.TxMalformed)
	}
}

func TestNetReceive(t *testing.T) {
	d := newNetDriver(t)
	d.start(netDriverFeatures)
	frame := testFrame(1514, 5)

	// Header split across two descriptors, then the data buffer: legal,
	// and the device must not care where the boundaries fall.
	h1, h2, body := d.buf(nil, 4, true), d.buf(nil, 8, true), d.buf(nil, 1514, true)
	for i := range d.ram[h1.addr : body.addr+1514] {
		d.ram[int(h1.addr)+i] = 0xee // stale data the header must overwrite
	}
	head := d.addChain(d.rxq, h1, h2, body)
	d.kick(d.rxq)
	if d.refil != 1 {
		t.Errorf("RxRefilled called %d times after an rx notify, want 1", d.refil)
	}
	rising := d.irq.rising
	if !d.dev.Receive(frame) {
		t.Fatal("Receive = false with a buffer posted")
	}
	d.expectHealthy()
	if got := d.usedIdx(d.rxq); got != 1 {
		t.Fatalf("used idx = %d, want 1", got)
	}
	id, l := d.usedElem(d.rxq, 0)
	if id != uint32(head) || l != uint32(virtio.NetHeaderSize+len(frame)) {
		t.Errorf("used elem = (%d, %d), want (%d, %d)", id, l, head, virtio.NetHeaderSize+len(frame))
	}
	gotHdr := append(append([]byte(nil), d.ram[h1.addr:h1.addr+4]...), d.ram[h2.addr:h2.addr+8]...)
	wantHdr := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0} // num_buffers = 1, no csum/gso
	if !bytes.Equal(gotHdr, wantHdr) {
		t.Errorf("header = % x, want % x", gotHdr, wantHdr)
	}
	if !bytes.Equal(d.ram[body.addr:body.addr+1514], frame) {
		t.Error("received frame not byte-exact in guest memory")
	}
	if d.irq.rising == rising || d.ack()&virtio.InterruptUsedBuffer == 0 {
		t.Error("no used-buffer interrupt after receive")
	}

	// A single buffer holding header and frame (Linux's small buffers).
	one := d.buf(nil, virtio.NetHeaderSize+1518, true)
	d.addChain(d.rxq, one)
	small := testFrame(42, 7)
	if !d.dev.Receive(small) {
		t.Fatal("second Receive = false")
	}
	if _, l := d.usedElem(d.rxq, 1); l != uint32(virtio.NetHeaderSize+len(small)) {
		t.Errorf("used len = %d", l)
	}
	if !bytes.Equal(d.ram[one.addr+virtio.NetHeaderSize:one.addr+virtio.NetHeaderSize+42], small) {
		t.Error("second frame not byte-exact")
	}
	if s := d.dev.Stats(); s.RxFrames != 2 || s.RxBytes != uint64(len(frame)+len(small)) {
		t.Errorf("stats = %+v", s)
	}
}

func TestNetReceiveWithoutBuffers(t *testing.T) {
	d := newNetDriver(t)
	frame := testFrame(60, 1)
	if d.dev.Receive(frame) {
		t.Fatal("Receive = true before the driver is up")
	}
	d.start(netDriverFeatures)
	if d.dev.Receive(frame) {
		t.Fatal("Receive = true with no receive buffer posted")
	}
	if d.usedIdx(d.rxq) != 0 {
		t.Fatal("used ring moved without a buffer")
	}
	// The driver refills: the VMM hears of it and retries.
	b := d.buf(nil, virtio.NetHeaderSize+1518, true)
	d.addChain(d.rxq, b)
	d.kick(d.rxq)
	if d.refil != 1 {
		t.Fatalf("RxRefilled calls = %d, want 1", d.refil)
	}
	if !d.dev.Receive(frame) {
		t.Fatal("Receive = false after refill")
	}
	if !bytes.Equal(d.ram[b.addr+virtio.NetHeaderSize:b.addr+virtio.NetHeaderSize+60], frame) {
		t.Error("frame not byte-exact after retry")
	}
	if s := d.dev.Stats(); s.RxNoBuffer != 2 || s.RxFrames != 1 {
		t.Errorf("stats = %+v, want 2 no-buffer and 1 frame", s)
	}
	// After a driver reset nothing is delivered until it sets up again.
	d.w32(netRegStatus, 0)
	if d.dev.Receive(frame) {
		t.Error("Receive = true after reset")
	}
}

func TestNetReceiveFrameTooBigForBuffer(t *testing.T) {
	d := newNetDriver(t)
	d.start(netDriverFeatures)
	tiny := d.buf(nil, virtio.NetHeaderSize+20, true)
	d.addChain(d.rxq, tiny)
	if !d.dev.Receive(testFrame(60, 1)) {
		t.Fatal("Receive = false: an undeliverable frame must be consumed, not retried forever")
	}
	d.expectHealthy()
	if d.usedIdx(d.rxq) != 1 {
		t.Fatal("buffer not returned")
	}
	if _, l := d.usedElem(d.rxq, 0); l != 0 {
		t.Errorf("used len = %d, want 0 for a dropped frame", l)
	}
	// Impossible frames are consumed without using a buffer.
	d.addChain(d.rxq, d.buf(nil, virtio.NetHeaderSize+1518, true))
	if !d.dev.Receive(make([]byte, 5)) || !d.dev.Receive(make([]byte, virtio.NetMaxFrame+1)) {
		t.Error("impossible frames not consumed")
	}
	if d.usedIdx(d.rxq) != 1 {
		t.Error("impossible frame used a buffer")
	}
	if s := d.dev.Stats(); s.RxDropped != 3 || s.RxFrames != 0 {
		t.Errorf("stats = %+v, want 3 dropped", s)
	}
	// The remaining buffer still works.
	if !d.dev.Receive(testFrame(100, 2)) || d.usedIdx(d.rxq) != 2 {
		t.Error("good frame not delivered after drops")
	}
}

func TestNetMalformedRingsFailTheDevice(t *testing.T) {
	t.Run("rx buffer outside RAM", func(t *testing.T) {
		d := newNetDriver(t)
		d.start(netDriverFeatures)
		d.addChain(d.rxq, netBuf{addr: netRAMSize - 100, len: 2000, write: true})
		if d.dev.Receive(testFrame(60, 1)) {
			t.Error("Receive = true into a buffer outside guest RAM")
		}
		if ok, _ := d.tr.Failed(); !ok {
			t.Fatal("device not failed")
		}
		if d.r32(netRegStatus)&virtio.StatusDeviceNeedsReset == 0 {
			t.Error("DEVICE_NEEDS_RESET not set")
		}
		if !strings.Contains(d.logs.String(), "level=ERROR") {
			t.Errorf("no error logged:\n%s", d.logs)
		}
		if d.dev.Receive(testFrame(60, 1)) {
			t.Error("failed device accepted a frame")
		}
		// A reset and a fresh setup bring it back.
		d.w32(netRegStatus, 0)
		d.start(netDriverFeatures)
		d.addChain(d.rxq, d.buf(nil, 2000, true))
		if !d.dev.Receive(testFrame(60, 1)) {
			t.Error("Receive = false after reset and setup")
		}
	})
	t.Run("tx descriptor loop", func(t *testing.T) {
		d := newNetDriver(t)
		d.start(netDriverFeatures)
		b := d.buf(nil, 100, false)
		d.addChain(d.txq, b, b)
		// Point the second descriptor back at the first.
		binary.LittleEndian.PutUint16(d.ram[d.txq.desc+16+12:], descFNext)
		binary.LittleEndian.PutUint16(d.ram[d.txq.desc+16+14:], 0)
		d.kick(d.txq)
		if ok, _ := d.tr.Failed(); !ok {
			t.Fatal("device not failed by a descriptor loop")
		}
		if len(d.sent) != 0 {
			t.Error("a frame was sent from a looping chain")
		}
	})
	t.Run("tx length overflow", func(t *testing.T) {
		d := newNetDriver(t)
		d.start(netDriverFeatures)
		d.addChain(d.txq, netBuf{addr: 0xffffffff_fffff000, len: 0x2000})
		d.kick(d.txq)
		if ok, _ := d.tr.Failed(); !ok {
			t.Fatal("device not failed by a wrapping buffer")
		}
	})
}

func TestNetSetLink(t *testing.T) {
	d := newNetDriver(t)
	d.start(netDriverFeatures)
	gen := d.r32(netRegConfigGen)
	d.dev.SetLink(false)
	var st [2]byte
	d.tr.ReadMMIO(devices.VirtioMMIOBase+netRegConfig+6, st[:])
	if st != [2]byte{} {
		t.Errorf("status after link down = % x", st)
	}
	if d.r32(netRegConfigGen) == gen || d.ack()&virtio.InterruptConfigChange == 0 {
		t.Error("link change did not bump the config generation and interrupt")
	}
	rising := d.irq.rising
	d.dev.SetLink(false)
	if d.irq.rising != rising {
		t.Error("unchanged link raised an interrupt")
	}
	d.dev.SetLink(true)
	d.tr.ReadMMIO(devices.VirtioMMIOBase+netRegConfig+6, st[:])
	if binary.LittleEndian.Uint16(st[:]) != virtio.NetLinkUp {
		t.Errorf("status after link up = % x", st)
	}
}
