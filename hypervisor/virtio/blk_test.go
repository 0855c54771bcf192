package virtio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// The fake driver below lays out a split virtqueue in a guest RAM slice
// the way Linux's virtio_blk does, and talks to the device only through the
// virtio-mmio registers, as a guest would.

// virtio-mmio register offsets (virtio 1.1 §4.2.2).
const (
	blkRegDeviceID       = 0x008
	blkRegDeviceFeatures = 0x010
	blkRegDevFeaturesSel = 0x014
	blkRegDrvFeatures    = 0x020
	blkRegDrvFeaturesSel = 0x024
	blkRegQueueSel       = 0x030
	blkRegQueueNumMax    = 0x034
	blkRegQueueNum       = 0x038
	blkRegQueueReady     = 0x044
	blkRegQueueNotify    = 0x050
	blkRegInterruptACK   = 0x064
	blkRegInterruptStat  = 0x060
	blkRegStatus         = 0x070
	blkRegQueueDescLow   = 0x080
	blkRegQueueDescHigh  = 0x084
	blkRegQueueAvailLow  = 0x090
	blkRegQueueAvailHigh = 0x094
	blkRegQueueUsedLow   = 0x0a0
	blkRegQueueUsedHigh  = 0x0a4
	blkRegConfig         = 0x100
)

// Guest memory layout of the fake driver.
const (
	blkRAMSize   = 1 << 20
	blkGuard     = 4096
	blkGuardByte = 0x5c
	blkQueueSize = 16
	blkDescAddr  = 0x1000
	blkAvailAddr = 0x2000
	blkUsedAddr  = 0x3000
	blkIndirect  = 0x4000 // an indirect descriptor table
	blkHdrAddr   = 0x8000 // request headers
	blkStatAddr  = 0x9000 // status bytes
	blkDataAddr  = 0x10000
	blkIRQ       = 6
	blkDiskSize  = 64 * 512

	blkDescNext     = 1
	blkDescWrite    = 2
	blkDescIndirect = 4

	blkDriverFeatures = 1<<virtio.FeatureVersion1 | 1<<virtio.BlkFeatureFlush |
		1<<virtio.BlkFeatureSegMax | 1<<virtio.BlkFeatureBlkSize
)

// blkMemBackend is a BlockBackend in memory that counts what the device asks
// of it and can be told to fail.
type blkMemBackend struct {
	data                   []byte
	id                     string
	readOnly               bool
	flushes, reads, writes int
	failIO                 bool
	// writesAtFlush records len(writes) at each flush, to check ordering.
	writesAtFlush []int
}

func newBlkMemBackend(size int) *blkMemBackend {
	return &blkMemBackend{data: make([]byte, size), id: "ftvm-test-disk-01"}
}

func (m *blkMemBackend) ReadAt(p []byte, off int64) (int, error) {
	m.reads++
	if m.failIO {
		return 0, errors.New("injected read error")
	}
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, errors.New("blkMemBackend: read out of range (device did not check bounds)")
	}
	return copy(p, m.data[off:]), nil
}

func (m *blkMemBackend) WriteAt(p []byte, off int64) (int, error) {
	m.writes++
	if m.failIO {
		return 0, errors.New("injected write error")
	}
	if m.readOnly || off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, errors.New("blkMemBackend: write out of range or read-only (device did not check)")
	}
	return copy(m.data[off:], p), nil
}

func (m *blkMemBackend) Flush() error {
	m.flushes++
	m.writesAtFlush = append(m.writesAtFlush, m.writes)
	if m.failIO {
		return errors.New("injected flush error")
	}
	return nil
}

func (m *blkMemBackend) Size() int64    { return int64(len(m.data)) }
func (m *blkMemBackend) ID() string     { return m.id }
func (m *blkMemBackend) ReadOnly() bool { return m.readOnly }

type blkIRQSink struct {
	high   bool
	rising int
}

func (s *blkIRQSink) SetIRQ(line uint8, high bool) {
	if high && !s.high {
		s.rising++
	}
	s.high = high
}

type blkDriver struct {
	t       testing.TB
	backing []byte // RAM with guard pages either side
	ram     []byte
	dev     *virtio.Blk
	tr      *virtio.Transport
	irq     *blkIRQSink
	logs    *bytes.Buffer

	nextDesc, availIdx, usedSeen uint16
}

func newBlkDriver(t testing.TB, be virtio.BlockBackend, cfg virtio.BlkConfig) *blkDriver {
	t.Helper()
	d := &blkDriver{t: t, irq: &blkIRQSink{}, logs: new(bytes.Buffer)}
	d.backing = bytes.Repeat([]byte{blkGuardByte}, blkGuard+blkRAMSize+blkGuard)
	d.ram = d.backing[blkGuard : blkGuard+blkRAMSize : blkGuard+blkRAMSize]
	clear(d.ram)
	log := slog.New(slog.NewTextHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.QueueSize == 0 {
		cfg.QueueSize = blkQueueSize
	}
	cfg.Logger = log
	var err error
	if d.dev, err = virtio.NewBlk(be, cfg); err != nil {
		t.Fatal(err)
	}
	d.tr, err = virtio.NewTransport(d.dev, virtio.TransportConfig{
		Base: devices.VirtioMMIOBase, IRQ: blkIRQ, IRQSink: d.irq, Memory: virtio.NewMemory(d.ram), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *blkDriver) r32(off uint64) uint32 {
	var b [4]byte
	d.tr.ReadMMIO(devices.VirtioMMIOBase+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (d *blkDriver) w32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.tr.WriteMMIO(devices.VirtioMMIOBase+off, b[:])
}

func (d *blkDriver) offered() uint64 {
	d.w32(blkRegDevFeaturesSel, 0)
	lo := d.r32(blkRegDeviceFeatures)
	d.w32(blkRegDevFeaturesSel, 1)
	return uint64(d.r32(blkRegDeviceFeatures))<<32 | uint64(lo)
}

// start brings the device up (§3.1.1) accepting features, with the
// request queue at the fixed ring addresses.
func (d *blkDriver) start(features uint64) {
	d.t.Helper()
	d.w32(blkRegStatus, 0)
	d.w32(blkRegStatus, virtio.StatusAcknowledge)
	d.w32(blkRegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	d.w32(blkRegDrvFeaturesSel, 0)
	d.w32(blkRegDrvFeatures, uint32(features))
	d.w32(blkRegDrvFeaturesSel, 1)
	d.w32(blkRegDrvFeatures, uint32(features>>32))
	d.w32(blkRegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	d.w32(blkRegQueueSel, 0)
	d.w32(blkRegQueueNum, blkQueueSize)
	for _, r := range []struct {
		lo, hi uint64
		addr   uint64
	}{{blkRegQueueDescLow, blkRegQueueDescHigh, blkDescAddr}, {blkRegQueueAvailLow, blkRegQueueAvailHigh, blkAvailAddr}, {blkRegQueueUsedLow, blkRegQueueUsedHigh, blkUsedAddr}} {
		d.w32(r.lo, uint32(r.addr))
		d.w32(r.hi, uint32(r.addr>>32))
	}
	d.w32(blkRegQueueReady, 1)
	d.w32(blkRegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	want := virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK
	if st := d.r32(blkRegStatus); st != want {
		d.t.Fatalf("status after DRIVER_OK = %#x, want %#x; log:\n%s", st, want, d.logs)
	}
	d.nextDesc, d.availIdx, d.usedSeen = 0, 0, 0
}

// blkSeg is one buffer of a request chain.
type blkSeg struct {
	addr  uint64
	len   uint32
	write bool
}

func (d *blkDriver) writeDesc(table uint64, i uint16, s blkSeg, flags, next uint16) {
	a := table + 16*uint64(i)
	binary.LittleEndian.PutUint64(d.ram[a:], s.addr)
	binary.LittleEndian.PutUint32(d.ram[a+8:], s.len)
	if s.write {
		flags |= blkDescWrite
	}
	binary.LittleEndian.PutUint16(d.ram[a+12:], flags)
	binary.LittleEndian.PutUint16(d.ram[a+14:], next)
}

// submit links segs into a chain of fresh ring descriptors, publishes it
// and returns its head.
func (d *blkDriver) submit(segs ...blkSeg) uint16 {
	head := d.nextDesc
	for i, s := range segs {
		idx := d.nextDesc
		d.nextDesc = (d.nextDesc + 1) % blkQueueSize
		var flags, next uint16
		if i < len(segs)-1 {
			flags, next = blkDescNext, d.nextDesc
		}
		d.writeDesc(blkDescAddr, idx, s, flags, next)
	}
	d.publish(head)
	return head
}

// submitIndirect puts segs in an indirect table behind one ring descriptor.
func (d *blkDriver) submitIndirect(segs ...blkSeg) uint16 {
	for i, s := range segs {
		var flags, next uint16
		if i < len(segs)-1 {
			flags, next = blkDescNext, uint16(i+1)
		}
		d.writeDesc(blkIndirect, uint16(i), s, flags, next)
	}
	head := d.nextDesc
	d.nextDesc = (d.nextDesc + 1) % blkQueueSize
	d.writeDesc(blkDescAddr, head, blkSeg{addr: blkIndirect, len: uint32(16 * len(segs))}, blkDescIndirect, 0)
	d.publish(head)
	return head
}

func (d *blkDriver) publish(head uint16) {
	binary.LittleEndian.PutUint16(d.ram[blkAvailAddr+4+2*uint64(d.availIdx%blkQueueSize):], head)
	d.availIdx++
	binary.LittleEndian.PutUint16(d.ram[blkAvailAddr+2:], d.availIdx)
}

func (d *blkDriver) kick() { d.w32(blkRegQueueNotify, 0) }

// completed returns the next used element, failing if the device has not
// produced one.
func (d *blkDriver) completed() (head uint16, length uint32) {
	d.t.Helper()
	if idx := binary.LittleEndian.Uint16(d.ram[blkUsedAddr+2:]); idx == d.usedSeen {
		d.t.Fatalf("no used element (used idx %d); log:\n%s", idx, d.logs)
	}
	a := blkUsedAddr + 4 + 8*uint64(d.usedSeen%blkQueueSize)
	d.usedSeen++
	return uint16(binary.LittleEndian.Uint32(d.ram[a:])), binary.LittleEndian.Uint32(d.ram[a+4:])
}

// header writes a request header at addr.
func (d *blkDriver) header(addr uint64, typ uint32, sector uint64) {
	binary.LittleEndian.PutUint32(d.ram[addr:], typ)
	binary.LittleEndian.PutUint32(d.ram[addr+4:], 0)
	binary.LittleEndian.PutUint64(d.ram[addr+8:], sector)
}

// request runs one request in the usual three-part layout (header, data,
// status) and returns the status byte and used length.
func (d *blkDriver) request(typ uint32, sector uint64, dataLen uint32, dataWritable bool) (byte, uint32) {
	d.t.Helper()
	d.header(blkHdrAddr, typ, sector)
	d.ram[blkStatAddr] = 0xff
	segs := []blkSeg{{addr: blkHdrAddr, len: 16}}
	if dataLen > 0 {
		segs = append(segs, blkSeg{addr: blkDataAddr, len: dataLen, write: dataWritable})
	}
	segs = append(segs, blkSeg{addr: blkStatAddr, len: 1, write: true})
	head := d.submit(segs...)
	d.kick()
	h, n := d.completed()
	if h != head {
		d.t.Fatalf("used head %d, want %d", h, head)
	}
	return d.ram[blkStatAddr], n
}

// expectHealthy checks the device has not failed and nothing outside
// guest RAM was touched.
func (d *blkDriver) expectHealthy() {
	d.t.Helper()
	if failed, err := d.tr.Failed(); failed {
		d.t.Fatalf("device failed: %v", err)
	}
	d.checkGuards()
}

func (d *blkDriver) checkGuards() {
	d.t.Helper()
	for i := 0; i < blkGuard; i++ {
		if d.backing[i] != blkGuardByte || d.backing[len(d.backing)-1-i] != blkGuardByte {
			d.t.Fatal("a byte outside guest RAM was written")
		}
	}
}

func blkPattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) ^ seed ^ byte(i>>9)
	}
	return p
}

func TestBlkIdentityFeaturesAndConfig(t *testing.T) {
	d := newBlkDriver(t, newBlkMemBackend(blkDiskSize+300), virtio.BlkConfig{})
	if id := d.r32(blkRegDeviceID); id != virtio.DeviceBlock {
		t.Fatalf("device ID %d, want 2", id)
	}
	f := d.offered()
	for _, bit := range []uint{virtio.BlkFeatureSegMax, virtio.BlkFeatureBlkSize, virtio.BlkFeatureFlush, virtio.FeatureVersion1} {
		if f&(1<<bit) == 0 {
			t.Errorf("feature %d not offered (features %#x)", bit, f)
		}
	}
	if f&(1<<virtio.BlkFeatureRO) != 0 {
		t.Error("RO offered for a writable backend")
	}
	d.w32(blkRegQueueSel, 0)
	if n := d.r32(blkRegQueueNumMax); n != blkQueueSize {
		t.Errorf("QueueNumMax %d", n)
	}
	d.w32(blkRegQueueSel, 1)
	if n := d.r32(blkRegQueueNumMax); n != 0 {
		t.Errorf("second queue exists: QueueNumMax %d", n)
	}

	// Config space at any width: capacity le64 at 0 (partial sector
	// dropped), seg_max at 0x0c, blk_size at 0x14, zeros after.
	var cfg [0x20]byte
	for i := 0; i < len(cfg); i += 4 {
		d.tr.ReadMMIO(devices.VirtioMMIOBase+blkRegConfig+uint64(i), cfg[i:i+4])
	}
	if c := binary.LittleEndian.Uint64(cfg[0:]); c != blkDiskSize/512 {
		t.Errorf("capacity %d sectors, want %d", c, blkDiskSize/512)
	}
	if s := binary.LittleEndian.Uint32(cfg[0x0c:]); s != blkQueueSize-2 {
		t.Errorf("seg_max %d, want %d", s, blkQueueSize-2)
	}
	if b := binary.LittleEndian.Uint32(cfg[0x14:]); b != 512 {
		t.Errorf("blk_size %d", b)
	}
	if !bytes.Equal(cfg[0x18:], make([]byte, 8)) || binary.LittleEndian.Uint32(cfg[0x08:]) != 0 {
		t.Errorf("fields without a feature are not zero: % x", cfg)
	}
	var c8 [8]byte
	d.tr.ReadMMIO(devices.VirtioMMIOBase+blkRegConfig, c8[:])
	var c1 [1]byte
	d.tr.ReadMMIO(devices.VirtioMMIOBase+blkRegConfig+1, c1[:])
	if binary.LittleEndian.Uint64(c8[:]) != blkDiskSize/512 || c1[0] != byte(blkDiskSize/512>>8) {
		t.Errorf("8-byte/1-byte capacity reads: % x, %x", c8, c1)
	}
	// Config writes are ignored.
	d.tr.WriteMMIO(devices.VirtioMMIOBase+blkRegConfig, []byte{1, 2, 3, 4})
	d.tr.ReadMMIO(devices.VirtioMMIOBase+blkRegConfig, c8[:])
	if binary.LittleEndian.Uint64(c8[:]) != blkDiskSize/512 {
		t.Error("config write changed capacity")
	}

	// 4096-byte blocks: capacity is whole blocks, in 512-byte sectors.
	d4 := newBlkDriver(t, newBlkMemBackend(3*4096+1024), virtio.BlkConfig{BlockSize: 4096})
	d4.tr.ReadMMIO(devices.VirtioMMIOBase+blkRegConfig, c8[:])
	var bs [4]byte
	d4.tr.ReadMMIO(devices.VirtioMMIOBase+blkRegConfig+0x14, bs[:])
	if binary.LittleEndian.Uint64(c8[:]) != 24 || binary.LittleEndian.Uint32(bs[:]) != 4096 || d4.dev.Capacity() != 24 {
		t.Errorf("4K blocks: capacity %d, blk_size %d", binary.LittleEndian.Uint64(c8[:]), binary.LittleEndian.Uint32(bs[:]))
	}

	// The default queue leaves seg_max under the indirect table limit.
	dd, err := virtio.NewBlk(newBlkMemBackend(4096), virtio.BlkConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if q := dd.QueueMaxSizes(); len(q) != 1 || q[0] != virtio.DefaultBlkQueueSize {
		t.Errorf("default queue sizes %v", q)
	}
	dd.ReadConfig(0x0c, bs[:])
	if s := binary.LittleEndian.Uint32(bs[:]); s+2 > virtio.MaxIndirect || s != virtio.DefaultBlkQueueSize-2 {
		t.Errorf("default seg_max %d", s)
	}
}

func TestNewBlkRejectsBadConfig(t *testing.T) {
	for _, cfg := range []virtio.BlkConfig{{QueueSize: 3}, {QueueSize: 2}, {QueueSize: 2048}, {BlockSize: 1024}, {BlockSize: 511}} {
		if _, err := virtio.NewBlk(newBlkMemBackend(4096), cfg); err == nil {
			t.Errorf("NewBlk accepted %+v", cfg)
		}
	}
	if _, err := virtio.NewBlk(nil, virtio.BlkConfig{}); err == nil {
		t.Error("NewBlk accepted a nil backend")
	}
}

func TestBlkWriteThenReadBack(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)

	// Write 8 sectors at sector 3, the data scattered over three
	// descriptors of uneven (but whole-sector total) sizes.
	data := blkPattern(8*512, 0x3c)
	copy(d.ram[blkDataAddr:], data)
	d.header(blkHdrAddr, virtio.BlkTypeOut, 3)
	d.ram[blkStatAddr] = 0xff
	head := d.submit(
		blkSeg{addr: blkHdrAddr, len: 16},
		blkSeg{addr: blkDataAddr, len: 1000},
		blkSeg{addr: blkDataAddr + 1000, len: 24},
		blkSeg{addr: blkDataAddr + 1024, len: 8*512 - 1024},
		blkSeg{addr: blkStatAddr, len: 1, write: true},
	)
	edges := d.irq.rising
	d.kick()
	if h, n := d.completed(); h != head || n != 1 {
		t.Fatalf("write used (%d, %d), want (%d, 1)", h, n, head)
	}
	if st := d.ram[blkStatAddr]; st != virtio.BlkStatusOK {
		t.Fatalf("write status %d", st)
	}
	if d.irq.rising != edges+1 || d.r32(blkRegInterruptStat)&virtio.InterruptUsedBuffer == 0 {
		t.Fatal("no used-buffer interrupt for the write")
	}
	d.w32(blkRegInterruptACK, virtio.InterruptUsedBuffer)
	if !bytes.Equal(be.data[3*512:11*512], data) || !bytes.Equal(be.data[:3*512], make([]byte, 3*512)) ||
		!bytes.Equal(be.data[11*512:], make([]byte, blkDiskSize-11*512)) {
		t.Fatal("backend does not hold exactly the written sectors")
	}

	// Read them back (plus the zero sector before) into buffers split
	// differently, after scribbling over the data area.
	for i := range 9 * 512 {
		d.ram[blkDataAddr+i] = 0xee
	}
	d.header(blkHdrAddr, virtio.BlkTypeIn, 2)
	d.ram[blkStatAddr] = 0xff
	head = d.submit(
		blkSeg{addr: blkHdrAddr, len: 16},
		blkSeg{addr: blkDataAddr, len: 512 + 7, write: true},
		blkSeg{addr: blkDataAddr + 519, len: 8*512 - 7, write: true},
		blkSeg{addr: blkStatAddr, len: 1, write: true},
	)
	d.kick()
	if h, n := d.completed(); h != head || n != 9*512+1 {
		t.Fatalf("read used (%d, %d), want (%d, %d)", h, n, head, 9*512+1)
	}
	if st := d.ram[blkStatAddr]; st != virtio.BlkStatusOK {
		t.Fatalf("read status %d", st)
	}
	want := append(make([]byte, 512), data...)
	if !bytes.Equal(d.ram[blkDataAddr:blkDataAddr+9*512], want) {
		t.Fatal("read-back data differs from what was written")
	}

	// The last sector of the disk is reachable.
	st, _ := d.request(virtio.BlkTypeOut, blkDiskSize/512-1, 512, false)
	if st != virtio.BlkStatusOK {
		t.Fatalf("write of the last sector: status %d", st)
	}
	if be.flushes != 0 {
		t.Fatalf("%d flushes with FLUSH negotiated and no flush request", be.flushes)
	}
	d.expectHealthy()
}

// Several requests made available before one kick are all served, in
// ring order, with one interrupt.
func TestBlkBatch(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)
	var heads []uint16
	for i := range 4 {
		h := blkHdrAddr + uint64(32*i)
		d.header(h, virtio.BlkTypeOut, uint64(i))
		copy(d.ram[blkDataAddr+512*i:], blkPattern(512, byte(i)))
		heads = append(heads, d.submit(
			blkSeg{addr: h, len: 16},
			blkSeg{addr: blkDataAddr + uint64(512*i), len: 512},
			blkSeg{addr: blkStatAddr + uint64(i), len: 1, write: true},
		))
	}
	edges := d.irq.rising
	d.kick()
	for i, want := range heads {
		if h, _ := d.completed(); h != want || d.ram[blkStatAddr+i] != virtio.BlkStatusOK {
			t.Fatalf("completion %d: head %d status %d, want head %d", i, h, d.ram[blkStatAddr+i], want)
		}
		if !bytes.Equal(be.data[512*i:512*(i+1)], blkPattern(512, byte(i))) {
			t.Fatalf("sector %d content", i)
		}
	}
	if d.irq.rising != edges+1 {
		t.Fatalf("%d interrupts for one batch", d.irq.rising-edges)
	}
	d.expectHealthy()
}

func TestBlkFlush(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)
	if st, n := d.request(virtio.BlkTypeOut, 0, 512, false); st != virtio.BlkStatusOK || n != 1 {
		t.Fatalf("write: %d, %d", st, n)
	}
	if st, n := d.request(virtio.BlkTypeFlush, 0, 0, false); st != virtio.BlkStatusOK || n != 1 {
		t.Fatalf("flush: status %d, used %d", st, n)
	}
	if be.flushes != 1 || be.writesAtFlush[0] != 1 {
		t.Fatalf("backend saw %d flushes (after %v writes), want 1 after the write", be.flushes, be.writesAtFlush)
	}
	be.failIO = true
	if st, _ := d.request(virtio.BlkTypeFlush, 0, 0, false); st != virtio.BlkStatusIOErr {
		t.Fatalf("failing flush: status %d, want IOERR", st)
	}
	d.expectHealthy()
}

// A driver that does not negotiate FLUSH assumes a write-through disk, so
// every write must reach stable storage before it completes.
func TestBlkWriteThroughWithoutFlushFeature(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures &^ (1 << virtio.BlkFeatureFlush))
	for i := range 3 {
		if st, _ := d.request(virtio.BlkTypeOut, uint64(i), 1024, false); st != virtio.BlkStatusOK {
			t.Fatalf("write %d: status %d", i, st)
		}
		if be.flushes != i+1 || be.writesAtFlush[i] != be.writes {
			t.Fatalf("after write %d: %d flushes, writes at flush %v, writes %d", i, be.flushes, be.writesAtFlush, be.writes)
		}
	}
	if st, _ := d.request(virtio.BlkTypeIn, 0, 512, true); st != virtio.BlkStatusOK || be.flushes != 3 {
		t.Fatalf("read caused a flush: status %d, flushes %d", st, be.flushes)
	}
}

func TestBlkGetID(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)
	for i := range 20 {
		d.ram[blkDataAddr+i] = 0xee
	}
	st, n := d.request(virtio.BlkTypeGetID, 0, virtio.BlkIDBytes, true)
	if st != virtio.BlkStatusOK || n != virtio.BlkIDBytes+1 {
		t.Fatalf("GET_ID: status %d, used %d", st, n)
	}
	want := make([]byte, 20)
	copy(want, "ftvm-test-disk-01")
	if got := d.ram[blkDataAddr : blkDataAddr+20]; !bytes.Equal(got, want) {
		t.Fatalf("GET_ID returned %q, want %q (NUL-padded)", got, want)
	}

	// An ID of exactly 20 bytes has no terminator; a longer one is cut.
	be2 := newBlkMemBackend(blkDiskSize)
	be2.id = "0123456789abcdefghijKLMN"
	d2 := newBlkDriver(t, be2, virtio.BlkConfig{})
	d2.start(blkDriverFeatures)
	if st, _ := d2.request(virtio.BlkTypeGetID, 0, 20, true); st != virtio.BlkStatusOK {
		t.Fatalf("status %d", st)
	}
	if got := string(d2.ram[blkDataAddr : blkDataAddr+21]); got != "0123456789abcdefghij\x00" {
		t.Fatalf("20-byte ID %q (and the byte after it must be untouched)", got)
	}
	// A smaller buffer gets what fits.
	clear(d2.ram[blkDataAddr : blkDataAddr+20])
	if st, n := d2.request(virtio.BlkTypeGetID, 0, 8, true); st != virtio.BlkStatusOK || n != 9 ||
		string(d2.ram[blkDataAddr:blkDataAddr+9]) != "01234567\x00" {
		t.Fatalf("short GET_ID: status %d used %d data %q", st, n, d2.ram[blkDataAddr:blkDataAddr+9])
	}
}

func TestBlkOutOfRangeAndMisaligned(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)
	const sectors = blkDiskSize / 512
	cases := []struct {
		name   string
		typ    uint32
		sector uint64
		len    uint32
	}{
		{"read at capacity", virtio.BlkTypeIn, sectors, 512},
		{"read across the end", virtio.BlkTypeIn, sectors - 1, 1024},
		{"write at capacity", virtio.BlkTypeOut, sectors, 512},
		{"write across the end", virtio.BlkTypeOut, sectors - 2, 4096},
		{"read at a huge sector", virtio.BlkTypeIn, 1 << 63, 512},
		{"write at the last sector number", virtio.BlkTypeOut, ^uint64(0), 512},
		{"read of part of a sector", virtio.BlkTypeIn, 0, 511},
		{"write of 1.5 sectors", virtio.BlkTypeOut, 0, 768},
	}
	for _, c := range cases {
		reads, writes := be.reads, be.writes
		for i := range c.len {
			d.ram[blkDataAddr+i] = 0xee
		}
		st, n := d.request(c.typ, c.sector, c.len, c.typ == virtio.BlkTypeIn)
		if st != virtio.BlkStatusIOErr {
			t.Errorf("%s: status %d, want IOERR", c.name, st)
		}
		if be.reads != reads || be.writes != writes {
			t.Errorf("%s: reached the backend", c.name)
		}
		if c.typ == virtio.BlkTypeIn {
			if n != c.len+1 || !bytes.Equal(d.ram[blkDataAddr:blkDataAddr+c.len], make([]byte, c.len)) {
				t.Errorf("%s: used %d, data area not zeroed", c.name, n)
			}
		}
	}
	// IOERR is a request failure, not a device failure: the device still
	// serves requests.
	if st, _ := d.request(virtio.BlkTypeIn, 0, 512, true); st != virtio.BlkStatusOK {
		t.Fatalf("read after errors: status %d", st)
	}
	d.expectHealthy()
}

func TestBlkBackendErrors(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	copy(be.data, blkPattern(512, 1))
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)
	be.failIO = true
	for i := range 512 {
		d.ram[blkDataAddr+i] = 0xee
	}
	if st, _ := d.request(virtio.BlkTypeIn, 0, 512, true); st != virtio.BlkStatusIOErr {
		t.Fatalf("failing read: status %d", st)
	}
	if !bytes.Equal(d.ram[blkDataAddr:blkDataAddr+512], make([]byte, 512)) {
		t.Fatal("failed read left stale bytes in the guest buffer")
	}
	if st, _ := d.request(virtio.BlkTypeOut, 0, 512, false); st != virtio.BlkStatusIOErr {
		t.Fatalf("failing write: status %d", st)
	}
	be.failIO = false
	if st, _ := d.request(virtio.BlkTypeIn, 0, 512, true); st != virtio.BlkStatusOK ||
		!bytes.Equal(d.ram[blkDataAddr:blkDataAddr+512], blkPattern(512, 1)) {
		t.Fatalf("read after recovery: status %d", st)
	}
	if !strings.Contains(d.logs.String(), "injected read error") {
		t.Errorf("backend error not logged:\n%s", d.logs)
	}
	d.expectHealthy()
}

func TestBlkUnsupportedTypes(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)
	// DISCARD (11) and WRITE_ZEROES (13) need features we do not offer;
	// 2 and 99 are not request types at all; GET_LIFETIME is 10.
	for _, typ := range []uint32{2, 10, 11, 13, 99, 0xffffffff} {
		dataLen := uint32(16)
		st, n := d.request(typ, 0, dataLen, false)
		if st != virtio.BlkStatusUnsupp || n != 1 {
			t.Errorf("type %d: status %d used %d, want UNSUPP, 1", typ, st, n)
		}
	}
	if be.reads+be.writes+be.flushes != 0 {
		t.Fatal("unsupported requests reached the backend")
	}
	d.expectHealthy()
}

// The spec leaves message framing to the driver: the header may be split
// over descriptors, share one with the data, and the status byte may share
// the last writable descriptor with read data.
func TestBlkAnyLayout(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)

	// Header in three pieces (4 + 5 + 7), the last piece continuing with
	// the data in the same buffer.
	data := blkPattern(1024, 0x77)
	d.header(blkDataAddr, virtio.BlkTypeOut, 5)
	copy(d.ram[blkDataAddr+16:], data)
	d.ram[blkStatAddr] = 0xff
	head := d.submit(
		blkSeg{addr: blkDataAddr, len: 4},
		blkSeg{addr: blkDataAddr + 4, len: 5},
		blkSeg{addr: blkDataAddr + 9, len: 7 + 1024},
		blkSeg{addr: blkStatAddr, len: 1, write: true},
	)
	d.kick()
	if h, _ := d.completed(); h != head || d.ram[blkStatAddr] != virtio.BlkStatusOK {
		t.Fatalf("split-header write: head %d status %d", h, d.ram[blkStatAddr])
	}
	if !bytes.Equal(be.data[5*512:7*512], data) {
		t.Fatal("split-header write stored the wrong bytes")
	}

	// Read: header split in two, data and status in one writable buffer.
	const out = 0x20000
	d.header(blkHdrAddr, virtio.BlkTypeIn, 5)
	d.ram[out+1024] = 0xff
	head = d.submit(
		blkSeg{addr: blkHdrAddr, len: 10},
		blkSeg{addr: blkHdrAddr + 10, len: 6},
		blkSeg{addr: out, len: 1024 + 1, write: true},
	)
	d.kick()
	if h, n := d.completed(); h != head || n != 1025 || d.ram[out+1024] != virtio.BlkStatusOK {
		t.Fatalf("combined read: head %d used %d status %d", h, n, d.ram[out+1024])
	}
	if !bytes.Equal(d.ram[out:out+1024], data) {
		t.Fatal("combined read returned the wrong bytes")
	}

	// The same request through an indirect table, when negotiated.
	d.start(blkDriverFeatures | 1<<virtio.FeatureIndirectDesc)
	clear(d.ram[out : out+1025])
	head = d.submitIndirect(
		blkSeg{addr: blkHdrAddr, len: 16},
		blkSeg{addr: out, len: 512, write: true},
		blkSeg{addr: out + 512, len: 512, write: true},
		blkSeg{addr: blkStatAddr, len: 1, write: true},
	)
	d.ram[blkStatAddr] = 0xff
	d.kick()
	if h, _ := d.completed(); h != head || d.ram[blkStatAddr] != virtio.BlkStatusOK || !bytes.Equal(d.ram[out:out+1024], data) {
		t.Fatalf("indirect read: head %d status %d", h, d.ram[blkStatAddr])
	}
	d.expectHealthy()
}

func TestBlkReadOnly(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	be.readOnly = true
	copy(be.data, blkPattern(512, 9))
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	if d.offered()&(1<<virtio.BlkFeatureRO) == 0 {
		t.Fatal("RO not offered for a read-only backend")
	}
	d.start(blkDriverFeatures | 1<<virtio.BlkFeatureRO)
	if st, _ := d.request(virtio.BlkTypeOut, 0, 512, false); st != virtio.BlkStatusIOErr {
		t.Fatalf("write to read-only disk: status %d", st)
	}
	if be.writes != 0 || !bytes.Equal(be.data[:512], blkPattern(512, 9)) {
		t.Fatal("write reached a read-only backend")
	}
	if st, _ := d.request(virtio.BlkTypeFlush, 0, 0, false); st != virtio.BlkStatusOK || be.flushes != 0 {
		t.Fatalf("flush of read-only disk: status %d flushes %d", st, be.flushes)
	}
	if st, _ := d.request(virtio.BlkTypeIn, 0, 512, true); st != virtio.BlkStatusOK ||
		!bytes.Equal(d.ram[blkDataAddr:blkDataAddr+512], blkPattern(512, 9)) {
		t.Fatalf("read of read-only disk: status %d", st)
	}

	// BlkConfig.ReadOnly forces RO over a writable backend.
	d2 := newBlkDriver(t, newBlkMemBackend(blkDiskSize), virtio.BlkConfig{ReadOnly: true})
	if d2.offered()&(1<<virtio.BlkFeatureRO) == 0 {
		t.Fatal("BlkConfig.ReadOnly did not offer RO")
	}
}

// A chain that is not a request fails the device cleanly: a logged error,
// DEVICE_NEEDS_RESET, a config interrupt, no panic, no stray writes; a
// driver reset brings it back.
func TestBlkMalformedChainsFailTheDevice(t *testing.T) {
	cases := []struct {
		name    string
		problem string
		segs    []blkSeg
	}{
		{"no status byte", "no device-writable status byte", []blkSeg{{addr: blkHdrAddr, len: 16}, {addr: blkDataAddr, len: 512}}},
		{"header only", "no device-writable status byte", []blkSeg{{addr: blkHdrAddr, len: 16}}},
		{"short header", "less than the 16-byte header", []blkSeg{{addr: blkHdrAddr, len: 10}, {addr: blkStatAddr, len: 1, write: true}}},
		{"no header at all", "less than the 16-byte header", []blkSeg{{addr: blkStatAddr, len: 1, write: true}}},
		{"buffer outside RAM", "outside guest RAM", []blkSeg{{addr: blkHdrAddr, len: 16}, {addr: blkRAMSize - 256, len: 512, write: true}, {addr: blkStatAddr, len: 1, write: true}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			be := newBlkMemBackend(blkDiskSize)
			d := newBlkDriver(t, be, virtio.BlkConfig{})
			d.start(blkDriverFeatures)
			d.header(blkHdrAddr, virtio.BlkTypeIn, 0)
			d.ram[blkStatAddr] = 0xff
			d.submit(c.segs...)
			d.kick()
			failed, err := d.tr.Failed()
			if !failed || !strings.Contains(err.Error(), c.problem) {
				t.Fatalf("failed=%v err=%v, want a failure mentioning %q", failed, err, c.problem)
			}
			if d.r32(blkRegStatus)&virtio.StatusDeviceNeedsReset == 0 || d.r32(blkRegInterruptStat)&virtio.InterruptConfigChange == 0 {
				t.Fatalf("status %#x interrupt status %#x", d.r32(blkRegStatus), d.r32(blkRegInterruptStat))
			}
			if n := strings.Count(d.logs.String(), "level=ERROR"); n != 1 || !strings.Contains(d.logs.String(), c.problem) {
				t.Fatalf("want one error line naming the problem:\n%s", d.logs)
			}
			if d.ram[blkStatAddr] != 0xff || be.reads+be.writes != 0 {
				t.Fatal("a malformed request was partly carried out")
			}
			if idx := binary.LittleEndian.Uint16(d.ram[blkUsedAddr+2:]); idx != 0 {
				t.Fatalf("used idx %d after a malformed chain", idx)
			}
			d.checkGuards()
			// Further kicks do nothing; a reset brings the device back.
			d.kick()
			d.start(blkDriverFeatures)
			if st, _ := d.request(virtio.BlkTypeIn, 0, 512, true); st != virtio.BlkStatusOK {
				t.Fatalf("after reset: status %d", st)
			}
			d.expectHealthy()
		})
	}
}

// Requests before a malformed one in the same batch complete normally.
func TestBlkMalformedAfterGoodRequest(t *testing.T) {
	be := newBlkMemBackend(blkDiskSize)
	d := newBlkDriver(t, be, virtio.BlkConfig{})
	d.start(blkDriverFeatures)
	d.header(blkHdrAddr, virtio.BlkTypeOut, 1)
	copy(d.ram[blkDataAddr:], blkPattern(512, 4))
	d.submit(blkSeg{addr: blkHdrAddr, len: 16}, blkSeg{addr: blkDataAddr, len: 512}, blkSeg{addr: blkStatAddr, len: 1, write: true})
	d.submit(blkSeg{addr: blkHdrAddr, len: 16})
	d.kick()
	if failed, _ := d.tr.Failed(); !failed {
		t.Fatal("device not failed")
	}
	if !bytes.Equal(be.data[512:1024], blkPattern(512, 4)) || d.ram[blkStatAddr] != virtio.BlkStatusOK {
		t.Fatal("the good request before the malformed one was not carried out")
	}
	d.checkGuards()
}

// Random request headers and layouts never panic, never touch memory
// outside guest RAM, and never reach the backend outside the disk (the
// blkMemBackend reports that as an error, which would show as IOERR, so it
// is checked directly).
func FuzzBlkRequest(f *testing.F) {
	f.Add(uint32(0), uint64(0), uint16(512), uint8(1), uint8(0))
	f.Add(uint32(1), uint64(63), uint16(512), uint8(2), uint8(1))
	f.Add(uint32(8), uint64(0), uint16(20), uint8(0), uint8(2))
	f.Add(uint32(4), uint64(1<<60), uint16(0), uint8(3), uint8(3))
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, dataLen uint16, split uint8, shape uint8) {
		be := &blkBoundsBackend{blkMemBackend: newBlkMemBackend(blkDiskSize), t: t}
		d := newBlkDriver(t, be, virtio.BlkConfig{})
		d.start(blkDriverFeatures)
		d.header(blkHdrAddr, typ, sector)
		n := uint32(dataLen) % 8192
		s := uint32(split) % 17
		var segs []blkSeg
		switch shape % 4 {
		case 0: // header split at s, data, status
			segs = []blkSeg{{addr: blkHdrAddr, len: s}, {addr: blkHdrAddr + uint64(s), len: 16 - min(s, 16)}}
		case 1: // header and data together
			segs = []blkSeg{{addr: blkHdrAddr, len: 16 + n}}
			n = 0
		case 2: // short header
			segs = []blkSeg{{addr: blkHdrAddr, len: s}}
		case 3: // header, no status
			segs = []blkSeg{{addr: blkHdrAddr, len: 16}, {addr: blkDataAddr, len: n}}
			d.submit(segs...)
			d.kick()
			d.checkGuards()
			return
		}
		if n > 0 {
			segs = append(segs, blkSeg{addr: blkDataAddr, len: n, write: typ != virtio.BlkTypeOut})
		}
		segs = append(segs, blkSeg{addr: blkStatAddr, len: 1, write: true})
		d.submit(segs...)
		d.kick()
		d.checkGuards()
		if failed, _ := d.tr.Failed(); !failed && d.ram[blkStatAddr] > virtio.BlkStatusUnsupp {
			t.Fatalf("status byte %d", d.ram[blkStatAddr])
		}
	})
}

// blkBoundsBackend fails the fuzz test if the device ever asks for bytes
// outside the disk.
type blkBoundsBackend struct {
	*blkMemBackend
	t *testing.T
}

func (b *blkBoundsBackend) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > b.Size() {
		b.t.Fatalf("device read [%d, %d) outside the disk", off, off+int64(len(p)))
	}
	return b.blkMemBackend.ReadAt(p, off)
}

func (b *blkBoundsBackend) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > b.Size() {
		b.t.Fatalf("device write [%d, %d) outside the disk", off, off+int64(len(p)))
	}
	return b.blkMemBackend.WriteAt(p, off)
}
