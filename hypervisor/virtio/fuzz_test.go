package virtio

import (
	"encoding/binary"
	"testing"
)

// Fuzz layout: a 16 KiB guest with two queues (8 and 4 entries) at fixed
// places. Input: byte 0 picks EVENT_IDX/INDIRECT_DESC, byte 1 the number
// of 5-byte register operations that follow, the rest is copied over
// guest RAM (so it is the rings, the descriptors and indirect tables).
const (
	fuzzRAM = 16 << 10
	fq0Desc = 0x000 // 8 entries: 0x80 bytes
	fq0Av   = 0x100
	fq0Used = 0x200
	fq1Desc = 0x400 // 4 entries
	fq1Av   = 0x500
	fq1Used = 0x600
)

func fuzzInput(features byte, ops [][5]byte, ram []byte) []byte {
	b := []byte{features, byte(len(ops))}
	for _, op := range ops {
		b = append(b, op[:]...)
	}
	return append(b, ram...)
}

func op(kind byte, v uint32) [5]byte {
	var o [5]byte
	o[0] = kind
	binary.LittleEndian.PutUint32(o[1:], v)
	return o
}

// seedRAM lays out valid traffic with the test driver so the fuzzer
// starts from rings that work.
func seedRAM(f *testing.F, features uint64) []byte {
	e := newEnv(f, fuzzRAM, 8, 4)
	q0 := &vq{size: 8, desc: fq0Desc, avail: fq0Av, used: fq0Used}
	q1 := &vq{size: 4, desc: fq1Desc, avail: fq1Av, used: fq1Used}
	copy(e.ram[0x1000:], "hello")
	e.addChain(q0, buf{addr: 0x1000, len: 5}, buf{addr: 0x2000, len: 16, write: true})
	e.addChain(q0, buf{addr: 0x1000, len: 2}, buf{addr: 0x1100, len: 3}, buf{addr: 0x2100, len: 8, write: true})
	if features&indirect != 0 {
		e.writeDesc(0x3000, 0, desc{addr: 0x1000, len: 5, flags: descFlagNext, next: 1})
		e.writeDesc(0x3000, 1, desc{addr: 0x2200, len: 5, flags: descFlagWrite})
		e.writeDesc(q1.desc, 0, desc{addr: 0x3000, len: 32, flags: descFlagIndirect})
		e.publish(q1, 0)
	}
	e.addChain(q1, buf{addr: 0x1000, len: 1}, buf{addr: 0x2300, len: 1, write: true})
	return e.ram
}

func FuzzQueue(f *testing.F) {
	kick := func(q uint32) [5]byte { return op(0, q) }
	for _, feat := range []byte{0, 1, 2, 3} {
		var features uint64
		if feat&1 != 0 {
			features |= eventIdx
		}
		if feat&2 != 0 {
			features |= indirect
		}
		ram := seedRAM(f, features)
		f.Add(fuzzInput(feat, [][5]byte{kick(0), kick(1), op(regInterruptACK|1, 3), kick(0)}, ram))
		// Bump avail idx in RAM (poke) and kick again; reset mid-way.
		f.Add(fuzzInput(feat, [][5]byte{kick(0), op(2, (fq0Av+2)<<8|3), kick(0), op(regStatus|1, 0), kick(0)}, ram))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		e := newEnv(t, fuzzRAM, 8, 4)
		features := version1
		if data[0]&1 != 0 {
			features |= eventIdx
		}
		if data[0]&2 != 0 {
			features |= indirect
		}
		ops := data[2:]
		ops = ops[:min(len(ops), 5*int(data[1]))]
		copy(e.ram, data[2+len(ops):])

		if !e.negotiate(features) {
			t.Fatal("negotiate")
		}
		e.setupQueue(0, 8, fq0Desc, fq0Av, fq0Used)
		e.setupQueue(1, 4, fq1Desc, fq1Av, fq1Used)
		e.driverOK()
		e.kick(0)
		e.kick(1)
		for ; len(ops) >= 5; ops = ops[5:] {
			kind, v := ops[0], binary.LittleEndian.Uint32(ops[1:])
			reg := uint64(kind &^ 3) // a register offset 0x00-0xfc
			switch kind & 3 {
			case 0:
				e.kick(v % 3)
			case 1:
				e.w32(reg, v)
			case 2: // the guest writes its memory between exits
				e.ram[(v>>8)%fuzzRAM] = byte(v)
			case 3:
				e.r32(reg)
				e.w32(regInterruptACK, e.r32(regInterruptStatus))
			}
		}
		// Work per notify is bounded by the queue size: the avail idx
		// cannot move while the device drains (the guest is stopped and
		// device writes cannot reach the rings).
		if e.dev.maxPops > 8 {
			t.Fatalf("%d chains popped in one notify", e.dev.maxPops)
		}
		if e.errorLogs() > 1+e.dev.resets {
			t.Fatalf("more than one error line per failure:\n%s", e.logs)
		}
		if e.sink.high != (e.tr.interruptStatus != 0) {
			t.Fatalf("line %v with interrupt status %#x", e.sink.high, e.tr.interruptStatus)
		}
		e.checkGuards()
	})
}
