package virtio

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Split virtqueue layout (virtio 1.1 §2.7).
const (
	descSize = 16 // struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next

	descFlagNext     = 1 // VIRTQ_DESC_F_NEXT
	descFlagWrite    = 2 // VIRTQ_DESC_F_WRITE
	descFlagIndirect = 4 // VIRTQ_DESC_F_INDIRECT

	availFlagNoInterrupt = 1 // VRING_AVAIL_F_NO_INTERRUPT

	// Alignment the spec requires of each part (§2.7, table).
	descAlign  = 16
	availAlign = 2
	usedAlign  = 4

	// MaxQueueSize is the largest split virtqueue (§2.7: Queue Size is a
	// power of two no larger than 32768).
	MaxQueueSize = 32768

	// MaxIndirect is the most descriptors an indirect table may hold.
	// Linux builds indirect tables longer than the queue (one entry per
	// scatter-gather element), so the spec's "chain no longer than the
	// queue" cannot be the bound there; QEMU's limit is 1024 and so is
	// ours, which bounds the work one Pop does. Devices must advertise
	// segment limits below it (virtio-blk seg_max).
	MaxIndirect = 1024
)

// availSize and usedSize are the ring sizes including the trailing
// used_event / avail_event field, which drivers always allocate.
func availSize(n uint16) uint64 { return 6 + 2*uint64(n) }
func usedSize(n uint16) uint64  { return 6 + 8*uint64(n) }

// Queue is the device side of one split virtqueue. The Transport owns it:
// the driver configures it through the transport registers, and after
// Activate the Device uses Pop, Push and the Signaller. It holds slices of
// guest RAM for the three ring areas (validated once, when the driver
// sets QueueReady) plus the device's private indices; it never allocates
// per descriptor.
//
// Work is bounded: one Pop visits at most Size() descriptors plus at most
// MaxIndirect in an indirect table, and a device draining the queue
// within one exit pops at most Size() chains, because the guest is
// stopped and no device write can reach the rings (enable rejects
// overlapping rings, Pop rejects writable buffers over them), so avail
// idx cannot move under the device.
//
// Once a Queue hits malformed driver behaviour it is failed: every later
// Pop returns the same *QueueError and Push does nothing, until the driver
// resets the device.
type Queue struct {
	index   int
	maxSize uint16
	onFail  func(error) // the transport's failure path; nil in bare tests

	// Driver-written configuration (transport registers).
	size                          uint16
	descAddr, driverAddr, devAddr uint64
	ready                         bool
	indirectOK, eventIdx          bool
	mem                           *Memory
	desc, avail, used             []byte
	lastAvail, usedIdx            uint16 // device's next avail slot; next used idx
	signalledUsed                 uint16 // used idx at the last interrupt decision
	signalledValid                bool
	inflight                      int // chains popped and not yet pushed
	err                           error
}

func newQueue(index int, maxSize uint16, onFail func(error)) *Queue {
	q := &Queue{index: index, maxSize: maxSize, onFail: onFail}
	q.reset()
	return q
}

// reset returns the queue to its power-on state (QueueNum defaults to
// QueueNumMax).
func (q *Queue) reset() {
	*q = Queue{index: q.index, maxSize: q.maxSize, onFail: q.onFail, size: q.maxSize}
}

// Index is the queue's index within its device.
func (q *Queue) Index() int { return q.index }

// Size is the queue size the driver chose (QueueNum).
func (q *Queue) Size() uint16 { return q.size }

// MaxSize is QueueNumMax.
func (q *Queue) MaxSize() uint16 { return q.maxSize }

// Ready reports whether the driver enabled the queue (QueueReady = 1)
// and it has not failed.
func (q *Queue) Ready() bool { return q.ready && q.err == nil }

// Err is the malformed-driver error that failed the queue, or nil.
func (q *Queue) Err() error { return q.err }

// fail records the first error, reports it to the transport and returns
// it.
func (q *Queue) fail(desc int, format string, args ...any) error {
	return q.failWith(&QueueError{Queue: q.index, Desc: desc, Problem: fmt.Sprintf(format, args...)})
}

func (q *Queue) failWith(err error) error {
	if q.err != nil {
		return q.err
	}
	q.err = err
	if q.onFail != nil {
		q.onFail(err)
	}
	return err
}

// enable validates the driver's ring addresses and maps the rings
// (QueueReady = 1). Any problem is a *QueueError and fails the queue.
func (q *Queue) enable(mem *Memory, indirect, eventIdx bool) error {
	if q.err != nil {
		return q.err
	}
	if err := q.mapRings(mem); err != nil {
		return q.failWith(err)
	}
	q.mem, q.indirectOK, q.eventIdx, q.ready = mem, indirect, eventIdx, true
	return nil
}

// mapRings checks the configured size and ring addresses and maps the
// three rings, or returns a *QueueError and fails nothing (a restore uses
// it on untrusted state).
func (q *Queue) mapRings(mem *Memory) error {
	bad := func(format string, args ...any) error {
		return &QueueError{Queue: q.index, Desc: -1, Problem: fmt.Sprintf(format, args...)}
	}
	n := q.size
	if n == 0 || n > q.maxSize || n&(n-1) != 0 {
		return bad("queue size %d is not a power of two in 1..%d", n, q.maxSize)
	}
	if q.descAddr%descAlign != 0 || q.driverAddr%availAlign != 0 || q.devAddr%usedAlign != 0 {
		return bad("misaligned rings: desc %#x, avail %#x, used %#x", q.descAddr, q.driverAddr, q.devAddr)
	}
	desc, err := mem.Slice(q.descAddr, descSize*uint64(n))
	if err != nil {
		return bad("descriptor table: %v", err)
	}
	avail, err := mem.Slice(q.driverAddr, availSize(n))
	if err != nil {
		return bad("available ring: %v", err)
	}
	used, err := mem.Slice(q.devAddr, usedSize(n))
	if err != nil {
		return bad("used ring: %v", err)
	}
	// The device writes the used ring; if it overlapped the descriptor
	// table or available ring, Push would rewrite the driver's side
	// and a device draining the queue could chase an avail idx it keeps
	// moving itself. No correct driver overlaps them.
	if overlaps(q.devAddr, usedSize(n), q.descAddr, descSize*uint64(n)) ||
		overlaps(q.devAddr, usedSize(n), q.driverAddr, availSize(n)) ||
		overlaps(q.descAddr, descSize*uint64(n), q.driverAddr, availSize(n)) {
		return bad("rings overlap: desc %#x, avail %#x, used %#x (size %d)", q.descAddr, q.driverAddr, q.devAddr, n)
	}
	q.desc, q.avail, q.used = desc, avail, used
	return nil
}

// overlaps reports whether [a, a+alen) and [b, b+blen) intersect. Both
// ranges are known to lie inside guest RAM, so the sums do not wrap.
func overlaps(a, alen, b, blen uint64) bool {
	return alen != 0 && blen != 0 && a < b+blen && b < a+alen
}

// writableHitsRings reports whether a device-writable buffer overlaps
// this queue's descriptor table, available ring or used ring.
func (q *Queue) writableHitsRings(addr, length uint64) bool {
	n := q.size
	return overlaps(addr, length, q.descAddr, descSize*uint64(n)) ||
		overlaps(addr, length, q.driverAddr, availSize(n)) ||
		overlaps(addr, length, q.devAddr, usedSize(n))
}

// disable is QueueReady = 0: the queue forgets its rings and indices.
func (q *Queue) disable() {
	err := q.err
	q.reset()
	q.err = err
}

// Chain is one descriptor chain taken from the available ring: the
// device-readable buffers followed by the device-writable ones, each a
// slice of guest RAM (writes go straight to the guest). It stays valid
// after later Pops (unless reused with PopInto) and its slices never
// reach outside guest RAM. Hand Head back to Queue.Push when done.
type Chain struct {
	Head        uint16   // descriptor index to report in the used ring
	Readable    [][]byte // driver-to-device buffers, in order
	Writable    [][]byte // device-to-driver buffers, in order
	ReadableLen uint32   // total bytes in Readable
	WritableLen uint32   // total bytes in Writable

	bufs [][]byte // backing array for Readable and Writable, reused by PopInto
}

// ReadAt copies the chain's readable bytes starting at off into p
// (io.ReaderAt: a short read returns io.EOF).
func (c *Chain) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("virtio: negative offset %d", off)
	}
	n := 0
	for _, b := range c.Readable {
		if n == len(p) {
			break
		}
		if off >= int64(len(b)) {
			off -= int64(len(b))
			continue
		}
		n += copy(p[n:], b[off:])
		off = 0
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt copies p into the chain's writable buffers starting at off
// (io.WriterAt: a short write returns io.ErrShortWrite). The caller
// reports the bytes written in Queue.Push.
func (c *Chain) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("virtio: negative offset %d", off)
	}
	n := 0
	for _, b := range c.Writable {
		if n == len(p) {
			break
		}
		if off >= int64(len(b)) {
			off -= int64(len(b))
			continue
		}
		n += copy(b[off:], p[n:])
		off = 0
	}
	if n < len(p) {
		return n, io.ErrShortWrite
	}
	return n, nil
}

func (c *Chain) clear(head uint16) {
	clear(c.bufs) // drop references to guest memory from the last use
	*c = Chain{Head: head, bufs: c.bufs[:0]}
}

// Pending is the number of chains the driver has made available that
// the device has not popped yet. It fails the queue if the driver moved
// avail idx more than the queue size ahead.
func (q *Queue) Pending() (uint16, error) {
	if q.err != nil {
		return 0, q.err
	}
	if !q.ready {
		return 0, nil
	}
	n := binary.LittleEndian.Uint16(q.avail[2:]) - q.lastAvail
	if n > q.size {
		return 0, q.fail(-1, "avail idx %d is %d entries ahead of the device (%d), more than the queue size %d",
			q.lastAvail+n, n, q.lastAvail, q.size)
	}
	return n, nil
}

// Pop takes the next available chain. ok is false when the ring is empty
// (or the queue not ready). A malformed chain fails the queue and returns
// a *QueueError. Pop allocates the chain's buffer lists; PopInto reuses
// them.
func (q *Queue) Pop() (c Chain, ok bool, err error) {
	ok, err = q.PopInto(&c)
	return c, ok, err
}

// PopInto is Pop into a caller-owned Chain, reusing its buffer lists, so
// a device that finishes each chain before popping the next one does not
// allocate per request. Any previous contents of c are overwritten.
func (q *Queue) PopInto(c *Chain) (ok bool, err error) {
	n, err := q.Pending()
	if err != nil || n == 0 {
		return false, err
	}
	head := binary.LittleEndian.Uint16(q.avail[4+2*uint64(q.lastAvail%q.size):])
	if head >= q.size {
		return false, q.fail(int(head), "available ring slot %d names descriptor %d, beyond the queue size %d",
			q.lastAvail%q.size, head, q.size)
	}
	if err := q.walk(head, c); err != nil {
		c.clear(head)
		return false, err
	}
	q.lastAvail++
	q.inflight++
	if q.eventIdx {
		// avail_event: ask to be kicked as soon as the driver adds
		// anything past what we have consumed. The device drains the
		// queue on each kick, so this never loses a notification.
		binary.LittleEndian.PutUint16(q.used[usedSize(q.size)-2:], q.lastAvail)
		q.mem.MarkDirty(q.devAddr, usedSize(q.size))
	}
	return true, nil
}

// walk follows the chain at head into c. The walk is bounded: at most
// the queue size descriptors in the table, plus at most MaxIndirect in
// an indirect table, each visited at most once or the chain is rejected
// as a loop.
func (q *Queue) walk(head uint16, c *Chain) error {
	c.clear(head)
	table := q.desc
	tableLen := uint32(q.size) // entries in the current table
	limit := uint32(q.size)    // descriptors the chain may still use in this table
	idx := uint32(head)
	indirectAt := -1 // ring descriptor that pointed to the indirect table we're in
	var rlen, wlen uint64
	nReadable := 0
	where := func() (int, string) { // descriptor index to report, and a qualifier
		if indirectAt >= 0 {
			return indirectAt, fmt.Sprintf("indirect entry %d: ", idx)
		}
		return int(idx), ""
	}
	for {
		if limit == 0 {
			d, w := where()
			return q.fail(d, "%schain longer than its table (%d descriptors): a loop", w, tableLen)
		}
		limit--
		d := table[idx*descSize : idx*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])

		if flags&descFlagIndirect != 0 {
			di, w := where()
			switch {
			case !q.indirectOK:
				return q.fail(di, "%sINDIRECT flag without VIRTIO_F_INDIRECT_DESC negotiated", w)
			case indirectAt >= 0:
				return q.fail(di, "%snested INDIRECT descriptor", w)
			case flags&descFlagNext != 0:
				return q.fail(di, "%sINDIRECT and NEXT both set", w)
			case length == 0 || length%descSize != 0:
				return q.fail(di, "%sindirect table length %d is not a non-zero multiple of %d", w, length, descSize)
			case length/descSize > MaxIndirect:
				return q.fail(di, "%sindirect table of %d descriptors exceeds %d", w, length/descSize, MaxIndirect)
			}
			t, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return q.fail(di, "%sindirect table: %v", w, err)
			}
			indirectAt = int(idx)
			table, tableLen, limit, idx = t, length/descSize, length/descSize, 0
			continue
		}

		buf, err := q.mem.Slice(addr, uint64(length))
		if err != nil {
			di, w := where()
			return q.fail(di, "%sbuffer: %v", w, err)
		}
		if flags&descFlagWrite != 0 {
			if q.writableHitsRings(addr, uint64(length)) {
				// Rejected because the device's own writes would then
				// change the rings under it: the one way a device
				// draining a queue within one exit could be made to
				// loop, since the guest itself is stopped.
				di, w := where()
				return q.fail(di, "%sdevice-writable buffer [%#x, %#x) overlaps the rings", w, addr, addr+uint64(length))
			}
			wlen += uint64(length)
			// The device may write any of it; say so before it does.
			q.mem.MarkDirty(addr, uint64(length))
		} else {
			if len(c.bufs) > nReadable {
				// §2.7.4.2: the driver MUST place device-writable
				// descriptors after device-readable ones; devices
				// split headers from payload on that guarantee.
				di, w := where()
				return q.fail(di, "%sdevice-readable descriptor after a device-writable one", w)
			}
			rlen += uint64(length)
			nReadable++
		}
		if rlen > 0xffffffff || wlen > 0xffffffff {
			di, w := where()
			return q.fail(di, "%stotal chain length overflows 32 bits", w)
		}
		c.bufs = append(c.bufs, buf)

		if flags&descFlagNext == 0 {
			break
		}
		if uint32(next) >= tableLen {
			di, w := where()
			return q.fail(di, "%snext index %d beyond the table of %d", w, next, tableLen)
		}
		idx = uint32(next)
	}
	c.Readable = c.bufs[:nReadable:nReadable]
	c.Writable = c.bufs[nReadable:]
	c.ReadableLen, c.WritableLen = uint32(rlen), uint32(wlen)
	return nil
}

// Push returns chain head to the driver with written bytes stored in its
// writable part: it writes the used element, then publishes it by
// advancing used idx (the order the spec requires; see the package
// comment for why no fence is needed). Pushing a head that was not popped
// is a device bug and fails the queue. A failed or disabled queue ignores
// Push.
func (q *Queue) Push(head uint16, written uint32) {
	if q.err != nil || !q.ready {
		return
	}
	if head >= q.size || q.inflight == 0 {
		_ = q.fail(int(head), "device pushed head %d with %d chains in flight (device bug)", head, q.inflight)
		return
	}
	e := 4 + 8*uint64(q.usedIdx%q.size)
	binary.LittleEndian.PutUint32(q.used[e:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[e+4:], written)
	q.usedIdx++
	binary.LittleEndian.PutUint16(q.used[2:], q.usedIdx)
	q.inflight--
	q.mem.MarkDirty(q.devAddr, usedSize(q.size))
}

// NeedsInterrupt reports whether the driver wants an interrupt for the
// used entries pushed since the last call, and records that decision.
// With VIRTIO_F_EVENT_IDX it honours used_event (§2.7.10); otherwise it
// honours VRING_AVAIL_F_NO_INTERRUPT. Nothing pushed since the last call
// means no interrupt.
func (q *Queue) NeedsInterrupt() bool {
	if q.err != nil || !q.ready {
		return false
	}
	old, valid := q.signalledUsed, q.signalledValid
	q.signalledUsed, q.signalledValid = q.usedIdx, true
	if valid && old == q.usedIdx {
		return false
	}
	if !q.eventIdx {
		return binary.LittleEndian.Uint16(q.avail[0:])&availFlagNoInterrupt == 0
	}
	if !valid {
		// No previous decision to compare used_event against (just
		// enabled): interrupt rather than risk a lost one.
		return true
	}
	usedEvent := binary.LittleEndian.Uint16(q.avail[availSize(q.size)-2:])
	// vring_need_event: interrupt if used_event lies in [old, new).
	return q.usedIdx-usedEvent-1 < q.usedIdx-old
}
