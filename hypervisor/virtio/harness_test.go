package virtio

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/devices"
)

// The test machine: guest RAM is a subslice of a larger buffer whose guard
// bytes on both sides must survive every test untouched.
const (
	guardLen  = 4096
	guardByte = 0xa5
	testBase  = devices.VirtioMMIOBase
	testIRQ   = 5

	// Ring and buffer placement used by the fake driver.
	q0Desc  = 0x1000
	q0Avail = 0x2000
	q0Used  = 0x3000
	dataBuf = 0x10000
)

// fakeSink is the PIC side of the IRQ line: it counts rising edges, the
// thing ftvm's 8259 latches.
type fakeSink struct {
	t      testing.TB
	high   bool
	rising int
}

func (s *fakeSink) SetIRQ(line uint8, high bool) {
	if line != testIRQ {
		s.t.Errorf("SetIRQ(%d): wrong line", line)
	}
	if high && !s.high {
		s.rising++
	}
	s.high = high
}

// echoDev copies (up to 4 KiB of) each chain's readable bytes into its
// writable part and returns the chain.
type echoDev struct {
	sizes      []uint16
	features   uint64
	config     [8]byte
	queues     []*Queue
	mem        *Memory
	sig        Signaller
	negotiated uint64
	activated  int
	resets     int
	notifies   int
	maxPops    int // most chains popped in one Notify
	chain      Chain
	buf        [4096]byte
}

func (d *echoDev) Type() uint32            { return 0x2a }
func (d *echoDev) Features() uint64        { return d.features }
func (d *echoDev) QueueMaxSizes() []uint16 { return d.sizes }
func (d *echoDev) ReadConfig(off uint64, data []byte) {
	for i := range data {
		if off+uint64(i) < uint64(len(d.config)) {
			data[i] = d.config[off+uint64(i)]
		}
	}
}
func (d *echoDev) WriteConfig(off uint64, data []byte) {
	for i := range data {
		if off+uint64(i) < uint64(len(d.config)) {
			d.config[off+uint64(i)] = data[i]
		}
	}
}
func (d *echoDev) Activate(f uint64, qs []*Queue, mem *Memory, sig Signaller) error {
	d.negotiated, d.queues, d.mem, d.sig = f, qs, mem, sig
	d.activated++
	return nil
}
func (d *echoDev) Reset() { d.queues, d.mem, d.sig = nil, nil, nil; d.resets++ }
func (d *echoDev) Notify(qi int) error {
	d.notifies++
	q := d.queues[qi]
	pops := 0
	defer func() { d.maxPops = max(d.maxPops, pops) }()
	for {
		ok, err := q.PopInto(&d.chain)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		pops++
		n := min(d.chain.ReadableLen, d.chain.WritableLen, uint32(len(d.buf)))
		if _, err := d.chain.ReadAt(d.buf[:n], 0); err != nil {
			panic(err) // n is within ReadableLen
		}
		if _, err := d.chain.WriteAt(d.buf[:n], 0); err != nil {
			panic(err)
		}
		q.Push(d.chain.Head, n)
	}
	d.sig.UsedBuffers(qi)
	return nil
}

type env struct {
	t       testing.TB
	backing []byte
	ram     []byte
	mem     *Memory
	sink    *fakeSink
	dev     *echoDev
	tr      *Transport
	logs    *bytes.Buffer
}

func newEnv(t testing.TB, ramSize int, sizes ...uint16) *env {
	t.Helper()
	if len(sizes) == 0 {
		sizes = []uint16{16}
	}
	e := &env{t: t, backing: make([]byte, guardLen+ramSize+guardLen), logs: new(bytes.Buffer)}
	for i := range e.backing {
		e.backing[i] = guardByte
	}
	e.ram = e.backing[guardLen : guardLen+ramSize : guardLen+ramSize]
	clear(e.ram)
	e.mem = NewMemory(e.ram)
	e.sink = &fakeSink{t: t}
	e.dev = &echoDev{sizes: sizes, features: 1 << 5}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	e.tr, err = NewTransport(e.dev, TransportConfig{Base: testBase, IRQ: testIRQ, IRQSink: e.sink, Memory: e.mem, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// checkGuards fails the test if anything outside guest RAM was written.
func (e *env) checkGuards() {
	e.t.Helper()
	for i := 0; i < guardLen; i++ {
		if e.backing[i] != guardByte || e.backing[len(e.backing)-1-i] != guardByte {
			e.t.Fatalf("guard byte touched outside guest memory")
		}
	}
}

// errorLogs counts ERROR lines logged so far.
func (e *env) errorLogs() int { return strings.Count(e.logs.String(), "level=ERROR") }

// Register access as a driver does it: aligned 32-bit MMIO.
func (e *env) r32(off uint64) uint32 {
	var b [4]byte
	e.tr.ReadMMIO(testBase+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (e *env) w32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	e.tr.WriteMMIO(testBase+off, b[:])
}

// Guest memory pokes for laying out rings (spec structs, little endian).
func (e *env) put16(a uint64, v uint16) { binary.LittleEndian.PutUint16(e.ram[a:], v) }
func (e *env) put32(a uint64, v uint32) { binary.LittleEndian.PutUint32(e.ram[a:], v) }
func (e *env) put64(a uint64, v uint64) { binary.LittleEndian.PutUint64(e.ram[a:], v) }
func (e *env) get16(a uint64) uint16    { return binary.LittleEndian.Uint16(e.ram[a:]) }
func (e *env) get32(a uint64) uint32    { return binary.LittleEndian.Uint32(e.ram[a:]) }

// negotiate runs §3.1.1 steps 1-6 accepting want (a subset of the offer
// unless the test means otherwise) and reports whether FEATURES_OK stuck.
func (e *env) negotiate(want uint64) bool {
	e.w32(regStatus, 0)
	e.w32(regStatus, StatusAcknowledge)
	e.w32(regStatus, StatusAcknowledge|StatusDriver)
	e.w32(regDriverFeaturesSel, 0)
	e.w32(regDriverFeatures, uint32(want))
	e.w32(regDriverFeaturesSel, 1)
	e.w32(regDriverFeatures, uint32(want>>32))
	e.w32(regStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	return e.r32(regStatus)&StatusFeaturesOK != 0
}

type vq struct {
	size               uint16
	desc, avail, used  uint64
	nextDesc, availIdx uint16
	lastUsed           uint16
}

// setupQueue configures queue qi with its rings at the given addresses
// and sets QueueReady.
func (e *env) setupQueue(qi uint32, size uint16, desc, avail, used uint64) *vq {
	e.w32(regQueueSel, qi)
	e.w32(regQueueNum, uint32(size))
	e.w32(regQueueDescLow, uint32(desc))
	e.w32(regQueueDescHigh, uint32(desc>>32))
	e.w32(regQueueDriverLow, uint32(avail))
	e.w32(regQueueDriverHigh, uint32(avail>>32))
	e.w32(regQueueDeviceLow, uint32(used))
	e.w32(regQueueDeviceHigh, uint32(used>>32))
	e.w32(regQueueReady, 1)
	return &vq{size: size, desc: desc, avail: avail, used: used}
}

func (e *env) driverOK() {
	e.w32(regStatus, e.r32(regStatus)|StatusDriverOK)
}

// start is the whole bring-up with one queue at the default place.
func (e *env) start(features uint64, size uint16) *vq {
	e.t.Helper()
	if !e.negotiate(features) {
		e.t.Fatalf("FEATURES_OK refused for %#x", features)
	}
	q := e.setupQueue(0, size, q0Desc, q0Avail, q0Used)
	e.driverOK()
	if st := e.r32(regStatus); st != StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK {
		e.t.Fatalf("status after DRIVER_OK = %#x; log:\n%s", st, e.logs)
	}
	return q
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func (e *env) writeDesc(table uint64, i uint16, d desc) {
	a := table + 16*uint64(i)
	e.put64(a, d.addr)
	e.put32(a+8, d.len)
	e.put16(a+12, d.flags)
	e.put16(a+14, d.next)
}

// buf is one buffer of a chain the fake driver builds.
type buf struct {
	addr  uint64
	len   uint32
	write bool
}

// addChain writes bufs as a NEXT-linked chain of fresh descriptors and
// makes it available; it returns the head.
func (e *env) addChain(q *vq, bufs ...buf) uint16 {
	head := q.nextDesc
	for i, b := range bufs {
		idx := q.nextDesc
		q.nextDesc = (q.nextDesc + 1) % q.size
		d := desc{addr: b.addr, len: b.len}
		if b.write {
			d.flags |= descFlagWrite
		}
		if i < len(bufs)-1 {
			d.flags |= descFlagNext
			d.next = q.nextDesc
		}
		e.writeDesc(q.desc, idx, d)
	}
	e.publish(q, head)
	return head
}

// publish puts head in the next avail slot and advances avail idx.
func (e *env) publish(q *vq, head uint16) {
	e.put16(q.avail+4+2*uint64(q.availIdx%q.size), head)
	q.availIdx++
	e.put16(q.avail+2, q.availIdx)
}

func (e *env) kick(qi uint32) { e.w32(regQueueNotify, qi) }

// usedElem reads used ring element i.
func (e *env) usedElem(q *vq, i uint16) (id, length uint32) {
	a := q.used + 4 + 8*uint64(i%q.size)
	return e.get32(a), e.get32(a + 4)
}

func (e *env) usedIdx(q *vq) uint16 { return e.get16(q.used + 2) }

// expectFailed checks the clean failure contract: DEVICE_NEEDS_RESET,
// a config-change interrupt on a raised line, one error log line naming
// the problem, and untouched guards.
func (e *env) expectFailed(problem string) {
	e.t.Helper()
	if failed, err := e.tr.Failed(); !failed {
		e.t.Fatalf("device not failed; log:\n%s", e.logs)
	} else if !strings.Contains(err.Error(), problem) {
		e.t.Errorf("error %q does not mention %q", err, problem)
	}
	if e.r32(regStatus)&StatusDeviceNeedsReset == 0 {
		e.t.Errorf("status %#x lacks DEVICE_NEEDS_RESET", e.r32(regStatus))
	}
	if e.r32(regInterruptStatus)&InterruptConfigChange == 0 || !e.sink.high || e.sink.rising == 0 {
		e.t.Errorf("no config-change interrupt: status %#x line %v edges %d", e.r32(regInterruptStatus), e.sink.high, e.sink.rising)
	}
	if n := e.errorLogs(); n != 1 {
		e.t.Errorf("%d error log lines, want 1:\n%s", n, e.logs)
	}
	if !strings.Contains(e.logs.String(), problem) {
		e.t.Errorf("log does not mention %q:\n%s", problem, e.logs)
	}
	e.checkGuards()
}
