package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
)

// virtio-blk feature bits this device may offer (virtio 1.1 §5.2.3).
const (
	BlkFeatureSegMax  = 2 // VIRTIO_BLK_F_SEG_MAX: seg_max is valid
	BlkFeatureRO      = 5 // VIRTIO_BLK_F_RO: the disk is read-only
	BlkFeatureBlkSize = 6 // VIRTIO_BLK_F_BLK_SIZE: blk_size is valid
	BlkFeatureFlush   = 9 // VIRTIO_BLK_F_FLUSH: the device has a write cache and takes T_FLUSH
)

// virtio-blk request types and status values (§5.2.6).
const (
	BlkTypeIn    uint32 = 0 // VIRTIO_BLK_T_IN: read sectors into the data buffers
	BlkTypeOut   uint32 = 1 // VIRTIO_BLK_T_OUT: write the data buffers to sectors
	BlkTypeFlush uint32 = 4 // VIRTIO_BLK_T_FLUSH
	BlkTypeGetID uint32 = 8 // VIRTIO_BLK_T_GET_ID: up to 20 bytes of device ID

	BlkStatusOK     byte = 0 // VIRTIO_BLK_S_OK
	BlkStatusIOErr  byte = 1 // VIRTIO_BLK_S_IOERR
	BlkStatusUnsupp byte = 2 // VIRTIO_BLK_S_UNSUPP
)

const (
	// BlkSectorSize is the unit of virtio-blk sector numbers and of the
	// capacity field, whatever the logical block size.
	BlkSectorSize = 512
	// BlkIDBytes is the size of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
	BlkIDBytes = 20
	// blkHeaderSize is struct virtio_blk_req's device-readable header:
	// le32 type, le32 reserved, le64 sector.
	blkHeaderSize = 16
	// blkConfigSize covers the config fields we fill (§5.2.4): capacity
	// (0x00), size_max (0x08), seg_max (0x0c), geometry (0x10), blk_size
	// (0x14). Everything after reads as zero, which is what the spec's
	// optional fields mean when their feature is not offered.
	blkConfigSize = 0x18

	// DefaultBlkQueueSize is the request queue size when BlkConfig leaves
	// it zero: Linux keeps at most this many requests in flight, and the
	// segment limit derives from it.
	DefaultBlkQueueSize = 256
)

// BlockBackend is what a virtio-blk device reads and writes: in ftvm a
// storage.Disk, wrapped by the VMM where the output rule holds writes back
// or a recorder logs read data. Offsets and lengths are in bytes and the
// device only issues requests inside [0, Size()). All calls happen on the
// vCPU exit loop, one at a time.
type BlockBackend interface {
	// ReadAt fills p from offset off; any error (including a short read)
	// fails the request with VIRTIO_BLK_S_IOERR. p may be guest memory.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off; p is guest memory and must not be kept
	// after return.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed write durable.
	Flush() error
	// Size is the disk size in bytes.
	Size() int64
	// ID is the device identifier the guest reads with GET_ID (the disk
	// serial); only its first BlkIDBytes bytes are used.
	ID() string
}

// ReadOnlyBackend is optionally implemented by a BlockBackend that can only
// be read (storage.Disk opened read-only); the device then offers
// VIRTIO_BLK_F_RO and refuses writes.
type ReadOnlyBackend interface {
	ReadOnly() bool
}

// BlkConfig adjusts a Blk device.
type BlkConfig struct {
	// QueueSize is the request queue's maximum size, a power of two in
	// 4..MaxIndirect; 0 means DefaultBlkQueueSize.
	QueueSize uint16
	// BlockSize is the logical block size reported in blk_size: 512
	// (default) or 4096. The capacity is rounded down to whole blocks.
	BlockSize uint32
	// ReadOnly offers VIRTIO_BLK_F_RO even if the backend is writable.
	ReadOnly bool
	// Logger receives I/O errors; nil means slog.Default().
	Logger *slog.Logger
}

// Blk is a virtio-blk device (virtio 1.1 §5.2) with one request queue.
// Requests are served synchronously inside Notify, on the vCPU exit loop,
// so the guest sees each completion at a deterministic point: the used
// ring is updated before the QueueNotify write that submitted it returns.
//
// A request the device understands but cannot carry out (a sector beyond
// the disk, a length that is not whole sectors, a write to a read-only
// disk, a backend error) completes with VIRTIO_BLK_S_IOERR and leaves the
// device working, as a real disk would. A chain that is not a request at
// all (header unreadable, no status byte) is a driver bug: Notify returns
// a *QueueError and the transport fails the device.
type Blk struct {
	backend   BlockBackend
	log       *slog.Logger
	readOnly  bool
	queueSize uint16
	segMax    uint32
	blockSize uint32
	sectors   uint64 // capacity in 512-byte sectors
	id        [BlkIDBytes]byte

	// Set by Activate, dropped by Reset.
	queue        *Queue
	signal       Signaller
	writeThrough bool // VIRTIO_BLK_F_FLUSH not negotiated: flush after every write

	chain Chain // reused for every request: no allocation per request
}

// NewBlk makes a virtio-blk device in front of backend.
func NewBlk(backend BlockBackend, cfg BlkConfig) (*Blk, error) {
	if backend == nil {
		return nil, errors.New("virtio-blk: no backend")
	}
	qs := cfg.QueueSize
	if qs == 0 {
		qs = DefaultBlkQueueSize
	}
	if qs < 4 || qs > MaxIndirect || qs&(qs-1) != 0 {
		return nil, fmt.Errorf("virtio-blk: queue size %d is not a power of two in 4..%d", qs, MaxIndirect)
	}
	bs := cfg.BlockSize
	if bs == 0 {
		bs = BlkSectorSize
	}
	if bs != 512 && bs != 4096 {
		return nil, fmt.Errorf("virtio-blk: block size %d is not 512 or 4096", bs)
	}
	size := backend.Size()
	if size < 0 {
		return nil, fmt.Errorf("virtio-blk: backend size %d is negative", size)
	}
	b := &Blk{
		backend:   backend,
		log:       cfg.Logger,
		readOnly:  cfg.ReadOnly,
		queueSize: qs,
		// Header and status take one descriptor each; the rest of a
		// queue-sized chain (or of an indirect table, which the
		// transport caps at MaxIndirect >= qs) can carry data.
		segMax:    uint32(qs) - 2,
		blockSize: bs,
		// Whole logical blocks only: a partial block at the end would be
		// addressable by sector but not by the guest's block layer.
		sectors: uint64(size) / uint64(bs) * uint64(bs) / BlkSectorSize,
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if ro, ok := backend.(ReadOnlyBackend); ok && ro.ReadOnly() {
		b.readOnly = true
	}
	// GET_ID: NUL-padded, no terminator when all 20 bytes are used.
	copy(b.id[:], backend.ID())
	return b, nil
}

// Type implements Device.
func (b *Blk) Type() uint32 { return DeviceBlock }

// Features implements Device. FLUSH is always offered: the backend is a
// host file whose writes sit in the page cache until Flush, which is
// exactly a volatile write cache, and offering it lets the guest order its
// journal with flushes instead of us syncing every write.
func (b *Blk) Features() uint64 {
	f := uint64(1)<<BlkFeatureSegMax | 1<<BlkFeatureBlkSize | 1<<BlkFeatureFlush
	if b.readOnly {
		f |= 1 << BlkFeatureRO
	}
	return f
}

// QueueMaxSizes implements Device: one request queue.
func (b *Blk) QueueMaxSizes() []uint16 { return []uint16{b.queueSize} }

// Capacity is the disk size in 512-byte sectors, as the guest sees it.
func (b *Blk) Capacity() uint64 { return b.sectors }

// ReadConfig implements Device.
func (b *Blk) ReadConfig(offset uint64, data []byte) {
	var cfg [blkConfigSize]byte
	binary.LittleEndian.PutUint64(cfg[0x00:], b.sectors)
	binary.LittleEndian.PutUint32(cfg[0x0c:], b.segMax)
	binary.LittleEndian.PutUint32(cfg[0x14:], b.blockSize)
	for i := range data {
		if o := offset + uint64(i); o >= offset && o < blkConfigSize {
			data[i] = cfg[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteConfig implements Device. Nothing in our config space is writable
// (writeback is only writable with VIRTIO_BLK_F_CONFIG_WCE, not offered).
func (b *Blk) WriteConfig(offset uint64, data []byte) {
	b.log.Debug("virtio-blk: ignored config write", "offset", offset, "len", len(data))
}

// Activate implements Device.
func (b *Blk) Activate(features uint64, queues []*Queue, mem *Memory, signal Signaller) error {
	b.queue, b.signal = queues[0], signal
	// Without FLUSH the driver assumes there is no write cache (Linux:
	// virtblk_get_cache_mode) and never flushes, so each write must be
	// durable before it completes.
	b.writeThrough = features&(1<<BlkFeatureFlush) == 0
	return nil
}

// Reset implements Device.
func (b *Blk) Reset() {
	b.queue, b.signal, b.writeThrough = nil, nil, false
	b.chain = Chain{}
}

// Notify implements Device: it serves every available request, then
// signals the used buffers once.
func (b *Blk) Notify(q int) error {
	if q != 0 || b.queue == nil {
		return nil
	}
	served := 0
	defer func() {
		if served > 0 {
			b.signal.UsedBuffers(0)
		}
	}()
	for {
		ok, err := b.queue.PopInto(&b.chain)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		written, err := b.serve(&b.chain)
		if err != nil {
			return err
		}
		b.queue.Push(b.chain.Head, written)
		served++
	}
}

// serve carries out one request and writes its status byte. It returns
// the used length, or a *QueueError for a chain that is not a request.
func (b *Blk) serve(c *Chain) (uint32, error) {
	var hdr [blkHeaderSize]byte
	if _, err := c.ReadAt(hdr[:], 0); err != nil {
		// ReadAt gathers across descriptors, so a header split over
		// several buffers is fine; only a too-short one lands here.
		return 0, &QueueError{Queue: 0, Desc: int(c.Head),
			Problem: fmt.Sprintf("virtio-blk request has %d device-readable bytes, less than the %d-byte header", c.ReadableLen, blkHeaderSize)}
	}
	if c.WritableLen == 0 {
		return 0, &QueueError{Queue: 0, Desc: int(c.Head),
			Problem: "virtio-blk request has no device-writable status byte"}
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	dataIn := c.WritableLen - 1 // device-writable bytes before the status byte

	status, used := BlkStatusOK, uint32(1)
	switch typ {
	case BlkTypeIn:
		// The whole writable area is written (data, zeros on error, then
		// status), so the used length may honestly claim all of it.
		status, used = b.read(c, sector, dataIn), c.WritableLen
	case BlkTypeOut:
		status = b.write(c, sector)
	case BlkTypeFlush:
		if !b.readOnly {
			if err := b.backend.Flush(); err != nil {
				b.log.Warn("virtio-blk: flush failed", "err", err)
				status = BlkStatusIOErr
			}
		}
	case BlkTypeGetID:
		var id [BlkIDBytes]byte
		n := min(dataIn, BlkIDBytes)
		copy(id[:], b.id[:n])
		fillWritable(c, id[:n], dataIn)
		used = c.WritableLen
	default:
		// DISCARD, WRITE_ZEROES and friends need features we do not
		// offer; anything else is unknown. Either way the spec's answer
		// is UNSUPP, not a device failure.
		b.log.Debug("virtio-blk: unsupported request type", "type", typ)
		status = BlkStatusUnsupp
	}
	if _, err := c.WriteAt([]byte{status}, int64(dataIn)); err != nil {
		// Cannot happen: WritableLen >= 1 was checked above.
		return 0, &QueueError{Queue: 0, Desc: int(c.Head), Problem: "virtio-blk status byte not writable"}
	}
	return used, nil
}

// span checks that n bytes at sector lie inside the disk and are whole
// sectors, and returns the byte offset.
func (b *Blk) span(sector uint64, n uint32) (int64, bool) {
	if n%BlkSectorSize != 0 || sector > b.sectors || uint64(n/BlkSectorSize) > b.sectors-sector {
		return 0, false
	}
	return int64(sector * BlkSectorSize), true
}

// read serves T_IN: the sectors go straight from the backend into the
// guest's buffers (no bounce copy). On any error the data area is zeroed,
// so the guest never sees a mix of new data and stale buffer contents.
func (b *Blk) read(c *Chain, sector uint64, n uint32) byte {
	off, ok := b.span(sector, n)
	if !ok {
		b.log.Debug("virtio-blk: read outside the disk or not whole sectors", "sector", sector, "len", n, "capacity", b.sectors)
		fillWritable(c, nil, n)
		return BlkStatusIOErr
	}
	left := n
	for _, seg := range c.Writable {
		if left == 0 {
			break
		}
		if uint32(len(seg)) > left {
			seg = seg[:left] // the status byte, and anything past it
		}
		if _, err := b.backend.ReadAt(seg, off); err != nil {
			b.log.Warn("virtio-blk: read failed", "sector", sector, "len", n, "err", err)
			fillWritable(c, nil, n)
			return BlkStatusIOErr
		}
		off += int64(len(seg))
		left -= uint32(len(seg))
	}
	return BlkStatusOK
}

// write serves T_OUT: the device-readable bytes after the header go from
// guest memory straight to the backend, segment by segment.
func (b *Blk) write(c *Chain, sector uint64) byte {
	n := c.ReadableLen - blkHeaderSize
	if b.readOnly {
		b.log.Debug("virtio-blk: write to a read-only disk refused", "sector", sector, "len", n)
		return BlkStatusIOErr
	}
	off, ok := b.span(sector, n)
	if !ok {
		b.log.Debug("virtio-blk: write outside the disk or not whole sectors", "sector", sector, "len", n, "capacity", b.sectors)
		return BlkStatusIOErr
	}
	skip := uint32(blkHeaderSize) // the header may span several segments
	for _, seg := range c.Readable {
		if skip >= uint32(len(seg)) {
			skip -= uint32(len(seg))
			continue
		}
		seg, skip = seg[skip:], 0
		if _, err := b.backend.WriteAt(seg, off); err != nil {
			b.log.Warn("virtio-blk: write failed", "sector", sector, "len", n, "err", err)
			return BlkStatusIOErr
		}
		off += int64(len(seg))
	}
	if b.writeThrough && n > 0 {
		if err := b.backend.Flush(); err != nil {
			b.log.Warn("virtio-blk: write-through flush failed", "sector", sector, "err", err)
			return BlkStatusIOErr
		}
	}
	return BlkStatusOK
}

// fillWritable writes p then zeros to the first n writable bytes of c.
func fillWritable(c *Chain, p []byte, n uint32) {
	for _, seg := range c.Writable {
		if n == 0 {
			return
		}
		if uint32(len(seg)) > n {
			seg = seg[:n]
		}
		k := copy(seg, p)
		p = p[k:]
		clear(seg[k:])
		n -= uint32(len(seg))
	}
}

// Compile-time check that Blk is a Device.
var _ Device = (*Blk)(nil)
