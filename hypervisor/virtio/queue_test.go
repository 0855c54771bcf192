package virtio

import (
	"io"
	"strings"
	"testing"
)

const (
	eventIdx = uint64(1) << FeatureEventIdx
	indirect = uint64(1) << FeatureIndirectDesc
	ram1M    = 1 << 20
	indTable = 0x8000 // where tests put indirect tables
)

// Each case lays out a malformed ring after a clean bring-up and kicks;
// the device must fail cleanly (expectFailed), not panic or spin.
func TestMalformedChains(t *testing.T) {
	cases := []struct {
		name     string
		features uint64
		setup    func(e *env, q *vq)
		problem  string
	}{
		{"buffer beyond RAM", 0, func(e *env, q *vq) {
			e.addChain(q, buf{addr: ram1M, len: 1})
		}, "outside guest RAM"},
		{"buffer straddles end of RAM", 0, func(e *env, q *vq) {
			e.addChain(q, buf{addr: ram1M - 1, len: 2, write: true})
		}, "outside guest RAM"},
		{"addr+len wraps", 0, func(e *env, q *vq) {
			e.addChain(q, buf{addr: ^uint64(0) - 3, len: 8})
		}, "overflows"},
		{"two-descriptor loop", 0, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: dataBuf, len: 1, flags: descFlagNext, next: 1})
			e.writeDesc(q.desc, 1, desc{addr: dataBuf, len: 1, flags: descFlagNext, next: 0})
			e.publish(q, 0)
		}, "loop"},
		{"self loop", 0, func(e *env, q *vq) {
			e.writeDesc(q.desc, 3, desc{addr: dataBuf, len: 1, flags: descFlagNext | descFlagWrite, next: 3})
			e.publish(q, 3)
		}, "loop"},
		{"next beyond queue", 0, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: dataBuf, len: 1, flags: descFlagNext, next: 8})
			e.publish(q, 0)
		}, "next index 8 beyond the table of 8"},
		{"head beyond queue", 0, func(e *env, q *vq) {
			e.publish(q, 9)
		}, "names descriptor 9"},
		{"avail idx jumps ahead", 0, func(e *env, q *vq) {
			e.put16(q.avail+2, 9)
		}, "more than the queue size"},
		{"readable after writable", 0, func(e *env, q *vq) {
			e.addChain(q, buf{addr: dataBuf, len: 4, write: true}, buf{addr: dataBuf + 16, len: 4})
		}, "readable descriptor after a device-writable"},
		{"writable buffer over avail ring", 0, func(e *env, q *vq) {
			e.addChain(q, buf{addr: dataBuf, len: 4}, buf{addr: q0Avail - 2, len: 4, write: true})
		}, "overlaps the rings"},
		{"writable buffer over used ring", 0, func(e *env, q *vq) {
			e.addChain(q, buf{addr: q0Used + 8, len: 4, write: true})
		}, "overlaps the rings"},
		{"indirect not negotiated", 0, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 16, flags: descFlagIndirect})
			e.publish(q, 0)
		}, "without VIRTIO_F_INDIRECT_DESC"},
		{"nested indirect", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 32, flags: descFlagIndirect})
			e.writeDesc(indTable, 0, desc{addr: dataBuf, len: 1, flags: descFlagNext, next: 1})
			e.writeDesc(indTable, 1, desc{addr: indTable + 0x100, len: 16, flags: descFlagIndirect})
			e.publish(q, 0)
		}, "indirect entry 1: nested INDIRECT"},
		{"indirect with next", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 16, flags: descFlagIndirect | descFlagNext, next: 1})
			e.publish(q, 0)
		}, "INDIRECT and NEXT"},
		{"indirect length not a multiple of 16", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 24, flags: descFlagIndirect})
			e.publish(q, 0)
		}, "not a non-zero multiple"},
		{"indirect length zero", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 0, flags: descFlagIndirect})
			e.publish(q, 0)
		}, "not a non-zero multiple"},
		{"indirect table too long", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 16 * (MaxIndirect + 1), flags: descFlagIndirect})
			e.publish(q, 0)
		}, "exceeds"},
		{"indirect table beyond RAM", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: ram1M - 16, len: 32, flags: descFlagIndirect})
			e.publish(q, 0)
		}, "indirect table"},
		{"indirect table wraps", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: ^uint64(0) - 15, len: 32, flags: descFlagIndirect})
			e.publish(q, 0)
		}, "overflows"},
		{"indirect loop", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 2, desc{addr: indTable, len: 48, flags: descFlagIndirect})
			e.writeDesc(indTable, 0, desc{addr: dataBuf, len: 1, flags: descFlagNext, next: 2})
			e.writeDesc(indTable, 2, desc{addr: dataBuf, len: 1, flags: descFlagNext, next: 0})
			e.publish(q, 2)
		}, "loop"},
		{"indirect next beyond table", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 32, flags: descFlagIndirect})
			e.writeDesc(indTable, 0, desc{addr: dataBuf, len: 1, flags: descFlagNext, next: 2})
			e.publish(q, 0)
		}, "next index 2 beyond the table of 2"},
		{"indirect entry outside RAM", indirect, func(e *env, q *vq) {
			e.writeDesc(q.desc, 0, desc{addr: indTable, len: 16, flags: descFlagIndirect})
			e.writeDesc(indTable, 0, desc{addr: 1 << 50, len: 1})
			e.publish(q, 0)
		}, "indirect entry 0: buffer"},
		{"good chain then a bad one", 0, func(e *env, q *vq) {
			e.addChain(q, buf{addr: dataBuf, len: 1}, buf{addr: dataBuf + 64, len: 1, write: true})
			e.addChain(q, buf{addr: ram1M, len: 1})
		}, "outside guest RAM"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, ram1M)
			q := e.start(version1|c.features, 8)
			c.setup(e, q)
			e.kick(0)
			e.expectFailed(c.problem)
			// A failed device ignores further kicks and logs nothing more.
			e.kick(0)
			if e.errorLogs() != 1 {
				t.Errorf("logged again after failing:\n%s", e.logs)
			}
			e.checkGuards()
		})
	}
}

// A chain whose total length does not fit the used ring's 32-bit length:
// 4097 overlapping descriptors covering all of a 1 MiB RAM.
func TestChainLengthOverflow(t *testing.T) {
	e := newEnv(t, ram1M, 8192)
	if !e.negotiate(version1) {
		t.Fatal("negotiate")
	}
	const desc0, avail0, used0 = 0x40000, 0x60000, 0x70000
	q := e.setupQueue(0, 8192, desc0, avail0, used0)
	e.driverOK()
	bufs := make([]buf, 4097)
	for i := range bufs {
		bufs[i] = buf{addr: 0, len: ram1M}
	}
	e.addChain(q, bufs...)
	e.kick(0)
	e.expectFailed("overflows 32 bits")
}

// Ring placement is checked when the driver sets QueueReady.
func TestMalformedRings(t *testing.T) {
	cases := []struct {
		name              string
		size              uint16
		desc, avail, used uint64
		problem           string
	}{
		{"descriptor table beyond RAM", 16, ram1M - 128, q0Avail, q0Used, "descriptor table"},
		{"avail ring beyond RAM", 16, q0Desc, ram1M - 2, q0Used, "available ring"},
		{"used ring wraps", 16, q0Desc, q0Avail, ^uint64(0) - 3, "used ring"},
		{"misaligned descriptor table", 16, q0Desc + 8, q0Avail, q0Used, "misaligned"},
		{"misaligned used ring", 16, q0Desc, q0Avail, q0Used + 2, "misaligned"},
		{"size not a power of two", 6, q0Desc, q0Avail, q0Used, "power of two"},
		{"size above max", 32, q0Desc, q0Avail, q0Used, "power of two in 1..16"},
		{"size zero", 0, q0Desc, q0Avail, q0Used, "power of two"},
		{"used over avail", 16, q0Desc, q0Avail, q0Avail, "overlap"},
		{"avail over descriptors", 16, q0Desc, q0Desc + 0x40, q0Used, "overlap"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, ram1M)
			if !e.negotiate(version1) {
				t.Fatal("negotiate")
			}
			e.setupQueue(0, c.size, c.desc, c.avail, c.used)
			e.expectFailed(c.problem)
			if e.r32(regQueueReady) != 0 {
				t.Error("bad queue reads ready")
			}
			e.driverOK()
			if e.dev.activated != 0 {
				t.Error("failed device activated")
			}
		})
	}
	// QueueNum above 32768 must not truncate into a valid size.
	e := newEnv(t, ram1M)
	e.negotiate(version1)
	e.w32(regQueueSel, 0)
	e.w32(regQueueNum, 0x10010) // 0x10 if truncated to 16 bits
	e.w32(regQueueDescLow, q0Desc)
	e.w32(regQueueDriverLow, q0Avail)
	e.w32(regQueueDeviceLow, q0Used)
	e.w32(regQueueReady, 1)
	e.expectFailed("power of two")
}

func TestDevicePushWithoutPopFails(t *testing.T) {
	e := newEnv(t, ram1M)
	e.start(version1, 8)
	e.dev.queues[0].Push(0, 0)
	e.expectFailed("device bug")
}

func TestIndirectChain(t *testing.T) {
	e := newEnv(t, ram1M)
	q := e.start(version1|indirect, 8)
	copy(e.ram[dataBuf:], "abc")
	copy(e.ram[dataBuf+0x10:], "defg")
	e.writeDesc(indTable, 0, desc{addr: dataBuf, len: 3, flags: descFlagNext, next: 2})
	e.writeDesc(indTable, 2, desc{addr: dataBuf + 0x10, len: 4, flags: descFlagNext, next: 1})
	e.writeDesc(indTable, 1, desc{addr: dataBuf + 0x100, len: 5, flags: descFlagWrite | descFlagNext, next: 3})
	e.writeDesc(indTable, 3, desc{addr: dataBuf + 0x200, len: 8, flags: descFlagWrite})
	// The ring descriptor's WRITE flag is ignored for indirect tables.
	e.writeDesc(q.desc, 5, desc{addr: indTable, len: 64, flags: descFlagIndirect | descFlagWrite})
	e.publish(q, 5)
	// A direct chain after it still works.
	copy(e.ram[dataBuf+0x300:], "xy")
	e.writeDesc(q.desc, 0, desc{addr: dataBuf + 0x300, len: 2, flags: descFlagNext, next: 1})
	e.writeDesc(q.desc, 1, desc{addr: dataBuf + 0x400, len: 2, flags: descFlagWrite})
	e.publish(q, 0)
	e.kick(0)
	if f, err := e.tr.Failed(); f {
		t.Fatal(err)
	}
	if id, n := e.usedElem(q, 0); id != 5 || n != 7 {
		t.Errorf("used {%d %d}, want {5 7}", id, n)
	}
	if id, n := e.usedElem(q, 1); id != 0 || n != 2 {
		t.Errorf("used {%d %d}, want {0 2}", id, n)
	}
	if got := string(e.ram[dataBuf+0x100:dataBuf+0x105]) + string(e.ram[dataBuf+0x200:dataBuf+0x202]); got != "abcdefg" {
		t.Errorf("echoed %q", got)
	}
	if got := string(e.ram[dataBuf+0x400 : dataBuf+0x402]); got != "xy" {
		t.Errorf("echoed %q", got)
	}
	e.checkGuards()
}

func TestEventIdxSuppression(t *testing.T) {
	e := newEnv(t, ram1M)
	q := e.start(version1|eventIdx, 8)
	usedEvent := q.avail + 4 + 2*8
	availEvent := q.used + 4 + 8*8
	add := func(n int) {
		for range n {
			e.addChain(q, buf{addr: dataBuf, len: 1}, buf{addr: dataBuf + 0x100, len: 1, write: true})
		}
		e.kick(0)
	}
	add(1) // first decision after enable always interrupts
	if e.sink.rising != 1 {
		t.Fatalf("edges %d, want 1", e.sink.rising)
	}
	e.w32(regInterruptACK, InterruptUsedBuffer)
	e.put16(usedEvent, 2) // interrupt once used idx passes 2
	add(1)                // used idx 2
	if e.sink.rising != 1 || e.r32(regInterruptStatus) != 0 {
		t.Fatalf("interrupt before used_event: edges %d", e.sink.rising)
	}
	add(1) // used idx 3: entry 2 used
	if e.sink.rising != 2 {
		t.Fatalf("no interrupt at used_event: edges %d", e.sink.rising)
	}
	if got := e.get16(availEvent); got != 3 {
		t.Errorf("avail_event %d, want 3", got)
	}
	e.put16(usedEvent, 4)
	add(3) // used idx 3 -> 6 crosses 4 in one batch
	if e.sink.rising != 3 {
		t.Fatalf("batched crossing missed: edges %d", e.sink.rising)
	}
	e.put16(usedEvent, 1) // in the past: no interrupt until it wraps around
	add(2)
	if e.sink.rising != 3 {
		t.Fatalf("interrupt for a stale used_event: edges %d", e.sink.rising)
	}
	if e.usedIdx(q) != 8 || e.get16(availEvent) != 8 {
		t.Errorf("used idx %d avail_event %d", e.usedIdx(q), e.get16(availEvent))
	}
}

func TestNoInterruptFlag(t *testing.T) {
	e := newEnv(t, ram1M)
	q := e.start(version1, 8)
	e.put16(q.avail, availFlagNoInterrupt)
	e.addChain(q, buf{addr: dataBuf, len: 1}, buf{addr: dataBuf + 0x100, len: 1, write: true})
	e.kick(0)
	if e.usedIdx(q) != 1 || e.sink.rising != 0 || e.r32(regInterruptStatus) != 0 {
		t.Fatalf("used %d edges %d status %#x", e.usedIdx(q), e.sink.rising, e.r32(regInterruptStatus))
	}
	e.put16(q.avail, 0)
	e.kick(0) // nothing new used: no interrupt
	if e.sink.rising != 0 {
		t.Fatal("interrupt with nothing used")
	}
	e.addChain(q, buf{addr: dataBuf, len: 1}, buf{addr: dataBuf + 0x100, len: 1, write: true})
	e.kick(0)
	if e.sink.rising != 1 {
		t.Fatal("no interrupt once NO_INTERRUPT cleared")
	}
}

// bareQueue is a Queue without a transport, for API-level tests.
func bareQueue(t testing.TB, e *env, size uint16, features uint64) (*Queue, *vq) {
	q := newQueue(0, size, nil)
	q.size, q.descAddr, q.driverAddr, q.devAddr = size, q0Desc, q0Avail, q0Used
	if err := q.enable(e.mem, features&indirect != 0, features&eventIdx != 0); err != nil {
		t.Fatal(err)
	}
	return q, &vq{size: size, desc: q0Desc, avail: q0Avail, used: q0Used}
}

func TestPopIntoDoesNotAllocate(t *testing.T) {
	e := newEnv(t, ram1M)
	q, d := bareQueue(t, e, 16, 0)
	var c Chain
	var hdr [4]byte
	allocs := testing.AllocsPerRun(200, func() {
		e.addChain(d, buf{addr: dataBuf, len: 4}, buf{addr: dataBuf + 4, len: 60},
			buf{addr: dataBuf + 0x100, len: 1, write: true})
		ok, err := q.PopInto(&c)
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
		if _, err := c.ReadAt(hdr[:], 0); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteAt(hdr[:1], 0); err != nil {
			t.Fatal(err)
		}
		q.Push(c.Head, 1)
		q.NeedsInterrupt()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request", allocs)
	}
}

func TestPopAndPending(t *testing.T) {
	e := newEnv(t, ram1M)
	q, d := bareQueue(t, e, 4, 0)
	if n, err := q.Pending(); n != 0 || err != nil {
		t.Fatal(n, err)
	}
	if _, ok, err := q.Pop(); ok || err != nil {
		t.Fatal("pop from empty ring", ok, err)
	}
	h1 := e.addChain(d, buf{addr: dataBuf, len: 2}, buf{addr: dataBuf + 2, len: 3})
	h2 := e.addChain(d, buf{addr: dataBuf + 0x100, len: 8, write: true})
	if n, _ := q.Pending(); n != 2 {
		t.Fatalf("pending %d", n)
	}
	c1, ok, err := q.Pop()
	if !ok || err != nil || c1.Head != h1 || c1.ReadableLen != 5 || c1.WritableLen != 0 || len(c1.Readable) != 2 || len(c1.Writable) != 0 {
		t.Fatalf("chain 1: %+v %v %v", c1, ok, err)
	}
	c2, _, _ := q.Pop()
	if c2.Head != h2 || c2.WritableLen != 8 || len(c2.Readable) != 0 {
		t.Fatalf("chain 2: %+v", c2)
	}
	// Chains outlive later pops and may complete out of order.
	q.Push(c2.Head, 8)
	q.Push(c1.Head, 0)
	if id, _ := e.usedElem(d, 0); id != uint32(h2) {
		t.Errorf("used[0] = %d", id)
	}
	if e.usedIdx(d) != 2 {
		t.Errorf("used idx %d", e.usedIdx(d))
	}
	// Indices wrap at 2^16, not at the queue size.
	for i := range 70000 {
		e.addChain(d, buf{addr: dataBuf, len: 1})
		c, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatalf("round %d: %v %v", i, ok, err)
		}
		q.Push(c.Head, 0)
	}
	if q.Err() != nil {
		t.Fatal(q.Err())
	}
}

func TestChainReadWriteAt(t *testing.T) {
	w1, w2 := make([]byte, 2), make([]byte, 3)
	c := Chain{Readable: [][]byte{[]byte("ab"), []byte("cde"), []byte("f")}, Writable: [][]byte{w1, w2}}
	p := make([]byte, 4)
	if n, err := c.ReadAt(p, 1); n != 4 || err != nil || string(p) != "bcde" {
		t.Errorf("ReadAt(1) = %d %v %q", n, err, p)
	}
	if n, err := c.ReadAt(p, 4); n != 2 || err != io.EOF || string(p[:2]) != "ef" {
		t.Errorf("ReadAt(4) = %d %v %q", n, err, p[:n])
	}
	if n, err := c.ReadAt(p, 10); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(10) = %d %v", n, err)
	}
	if _, err := c.ReadAt(p, -1); err == nil {
		t.Error("negative offset accepted")
	}
	if n, err := c.WriteAt([]byte("XYZ"), 1); n != 3 || err != nil || string(w1) != "\x00X" || string(w2) != "YZ\x00" {
		t.Errorf("WriteAt(1) = %d %v %q %q", n, err, w1, w2)
	}
	if n, err := c.WriteAt([]byte("123"), 3); n != 2 || err != io.ErrShortWrite || string(w2) != "Y12" {
		t.Errorf("WriteAt(3) = %d %v %q", n, err, w2)
	}
}

func TestQueueErrorMessage(t *testing.T) {
	err := &QueueError{Queue: 1, Desc: 7, Problem: "loop"}
	if !strings.Contains(err.Error(), "virtqueue 1 descriptor 7: loop") {
		t.Error(err)
	}
	if got := (&QueueError{Queue: 0, Desc: -1, Problem: "x"}).Error(); got != "virtqueue 0: x" {
		t.Error(got)
	}
}
