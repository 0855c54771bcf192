package vm_test

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

// linuxLikeState is a vCPU state shaped like a 64-bit Linux guest's at a
// kick: long mode, kernel segments, the SYSCALL MSRs set, SSE registers in
// use, an interrupt shadow, and the MSR list a checkpoint carries for our
// CPUID (base, optional, MTRRs, 32 machine-check banks).
func linuxLikeState(withXSave bool) *vm.CPUState {
	rng := rand.New(rand.NewPCG(1, 2))
	st := &vm.CPUState{}
	r := &st.Regs
	r.RAX, r.RBX, r.RCX, r.RDX = rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64()
	r.RSI, r.RDI, r.RSP, r.RBP = rng.Uint64(), rng.Uint64(), 0xffffc90000013e80, 0xffffc90000013ec8
	r.R8, r.R15 = rng.Uint64(), rng.Uint64()
	r.RIP, r.RFLAGS = 0xffffffff81a3c2d1, 0x246
	s := &st.Sregs
	code := kvm.Segment{Selector: 0x10, Type: 11, Present: 1, S: 1, L: 1, G: 1, Limit: 0xffffffff}
	data := kvm.Segment{Selector: 0x18, Type: 3, Present: 1, S: 1, DB: 1, G: 1, Limit: 0xffffffff}
	s.CS, s.DS, s.ES, s.SS, s.FS, s.GS = code, data, data, data, data, data
	s.GS.Base = 0xffff88800f600000
	s.TR = kvm.Segment{Selector: 0x40, Type: 11, Present: 1, Base: 0xfffffe0000003000, Limit: 0x4087}
	s.LDT = kvm.Segment{Unusable: 1}
	s.GDT = kvm.DTable{Base: 0xfffffe0000001000, Limit: 0x7f}
	s.IDT = kvm.DTable{Base: 0xfffffe0000000000, Limit: 0xfff}
	s.CR0, s.CR3, s.CR4, s.EFER = 0x80050033, 0x2a0c000, 0x3006b0, 0xd01
	s.CR2 = 0x7f3a1c000000
	if withXSave {
		st.HasXSave = true
		b := st.XSave.Bytes()
		binary.LittleEndian.PutUint16(b[0:], 0x37f)
		binary.LittleEndian.PutUint32(b[24:], 0x1f80)
		for i := 160; i < 160+16*16; i++ {
			b[i] = byte(rng.Uint32())
		}
		binary.LittleEndian.PutUint64(b[512:], 3)
		st.XCRs = []kvm.XCR{{XCR: 0, Value: 1}}
	} else {
		st.FPU.FCW, st.FPU.MXCSR = 0x37f, 0x1f80
		for i := range st.FPU.XMM {
			st.FPU.XMM[i][3] = byte(i)
		}
	}
	st.Events.Interrupt.Shadow = 2
	st.Events.Flags = 0xd // NMI_PENDING | SHADOW | SMM, what KVM_GET_VCPU_EVENTS reports
	st.Debug.DR6, st.Debug.DR7 = 0xffff0ff0, 0x400
	for _, m := range []uint32{0x140, 0x174, 0x175, 0x176, 0x17a, 0x1a0, 0x1fc, 0x277} {
		st.MSRs = append(st.MSRs, kvm.MSREntry{Index: m, Data: rng.Uint64()})
	}
	for i := uint32(0); i < 8; i++ { // variable MTRRs
		st.MSRs = append(st.MSRs, kvm.MSREntry{Index: 0x200 + 2*i}, kvm.MSREntry{Index: 0x201 + 2*i})
	}
	for _, m := range []uint32{0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, 0x2ff} {
		st.MSRs = append(st.MSRs, kvm.MSREntry{Index: m})
	}
	for i := uint32(0); i < 32*4; i++ { // machine-check banks
		st.MSRs = append(st.MSRs, kvm.MSREntry{Index: 0x400 + i, Data: uint64(i%4/3) * ^uint64(0)})
	}
	for _, m := range []uint32{0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102, 0xc0010015} {
		st.MSRs = append(st.MSRs, kvm.MSREntry{Index: m, Data: rng.Uint64()})
	}
	slices.SortFunc(st.MSRs, func(a, b kvm.MSREntry) int { return cmp.Compare(a.Index, b.Index) })
	return st
}

func TestCPUStateEncodingRoundTrip(t *testing.T) {
	for _, withXSave := range []bool{true, false} {
		st := linuxLikeState(withXSave)
		b, err := st.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("XSAVE=%v: %d MSRs, %d bytes encoded (at most %d)", withXSave, len(st.MSRs), len(b), vm.MaxCPUStateSize)
		var got vm.CPUState
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if !got.Equal(st) {
			t.Fatalf("XSAVE=%v: decoded state differs from the encoded one:\n got %+v\nwant %+v", withXSave, got.Regs, st.Regs)
		}
		again, err := got.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("XSAVE=%v: re-encoding differs", withXSave)
		}
		// Decoding replaces everything, including what an earlier decode
		// left behind.
		other := linuxLikeState(!withXSave)
		if err := other.UnmarshalBinary(b); err != nil || !other.Equal(st) {
			t.Fatalf("XSAVE=%v: decoding into a used state: err %v, equal %v", withXSave, err, other.Equal(st))
		}
	}
}

// TestCPUStateEncodingLayout pins a few fields to the byte offsets the
// format documents, so the encoding cannot silently follow a Go struct.
func TestCPUStateEncodingLayout(t *testing.T) {
	st := linuxLikeState(true)
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	const regs, sregs = 8, 8 + 144
	const xsave = sregs + 292
	const xcrs = xsave + 4096
	const events = xcrs + 1 + 12
	const debug = events + 37
	const msrs = debug + 48
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"magic", uint64(le.Uint32(b[0:])), uint64(le.Uint32([]byte("FTVC")))},
		{"version", uint64(le.Uint16(b[4:])), 1},
		{"flags", uint64(le.Uint16(b[6:])), 1},
		{"RAX", le.Uint64(b[regs:]), st.Regs.RAX},
		{"RIP", le.Uint64(b[regs+16*8:]), st.Regs.RIP},
		{"CS.Selector", uint64(le.Uint16(b[sregs+12:])), 0x10},
		{"CS.L", uint64(b[sregs+14+5]), 1},
		{"GS.Base", le.Uint64(b[sregs+4*23:]), st.Sregs.GS.Base},
		{"IDT.Base", le.Uint64(b[sregs+8*23+10:]), st.Sregs.IDT.Base},
		{"CR0", le.Uint64(b[sregs+8*23+20:]), st.Sregs.CR0},
		{"EFER", le.Uint64(b[sregs+8*23+20+5*8:]), st.Sregs.EFER},
		{"MXCSR", uint64(le.Uint32(b[xsave+24:])), 0x1f80},
		{"XCR count", uint64(b[xcrs]), 1},
		{"XCR0", le.Uint64(b[xcrs+1+4:]), 1},
		{"interrupt.shadow", uint64(b[events+8+3]), 2},
		{"event flags", uint64(le.Uint32(b[events+8+4+3+4:])), 0xd},
		{"DR7", le.Uint64(b[debug+5*8:]), 0x400},
		{"MSR count", uint64(le.Uint16(b[msrs:])), uint64(len(st.MSRs))},
		{"first MSR", uint64(le.Uint32(b[msrs+2:])), 0x140},
		{"length", uint64(len(b)), uint64(msrs + 2 + 12*len(st.MSRs))},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestCPUStateDecodeRejectsBadInput(t *testing.T) {
	good, err := linuxLikeState(true).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	fpuOnly, err := linuxLikeState(false).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// Every proper prefix is truncated.
	for _, enc := range [][]byte{good, fpuOnly} {
		for n := 0; n < len(enc); n++ {
			var st vm.CPUState
			err := st.UnmarshalBinary(enc[:n])
			if err == nil || !strings.Contains(err.Error(), "truncated") {
				t.Fatalf("prefix of %d of %d bytes: err = %v, want truncated", n, len(enc), err)
			}
		}
	}
	le := binary.LittleEndian
	const sregs = 8 + 144
	const xcrs = sregs + 292 + 4096
	const events = xcrs + 1 + 12
	const msrs = events + 37 + 48
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "truncated in the header"},
		{"magic", edit(func(b []byte) []byte { b[0] = 'X'; return b }), "not a vCPU state"},
		{"version", edit(func(b []byte) []byte { b[4] = 2; return b }), "version 2"},
		{"flags", edit(func(b []byte) []byte { b[6] |= 0x80; return b }), "unknown header flags 0x80"},
		{"XSAVE flag on an FPU state", func() []byte { b := bytes.Clone(fpuOnly); b[6] = 1; return b }(), "truncated"},
		{"segment flag", edit(func(b []byte) []byte { b[sregs+14+1] = 2; return b }), "segment CS: a flag is 2"},
		{"segment type", edit(func(b []byte) []byte { b[sregs+23+14] = 16; return b }), "segment DS: type 16"},
		{"XCR count", edit(func(b []byte) []byte { b[xcrs] = 17; return b }), "17 XCRs"},
		{"event boolean", edit(func(b []byte) []byte { b[events] = 7; return b }), "exception.injected is 7"},
		{"interrupt shadow", edit(func(b []byte) []byte { b[events+8+3] = 4; return b }), "interrupt shadow 0x4"},
		{"event flags", edit(func(b []byte) []byte { le.PutUint32(b[events+19:], 0x40); return b }), "unknown event flags 0x40"},
		{"MSR order", edit(func(b []byte) []byte { le.PutUint32(b[msrs+2+12:], 0x100); return b }), "ascending"},
		{"duplicate MSR", edit(func(b []byte) []byte { copy(b[msrs+2+12:msrs+2+16], b[msrs+2:msrs+6]); return b }), "ascending"},
		{"MSR count too large", edit(func(b []byte) []byte { le.PutUint16(b[msrs:], vm.MaxCPUStateMSRs+1); return b }), "513 MSRs"},
		{"MSR count beyond the data", edit(func(b []byte) []byte { le.PutUint16(b[msrs:], le.Uint16(b[msrs:])+1); return b }), "truncated"},
		{"trailing byte", append(bytes.Clone(good), 0), "1 bytes after the end"},
		{"oversized", make([]byte, vm.MaxCPUStateSize+1), "more than the largest valid state"},
	} {
		var st vm.CPUState
		err := st.UnmarshalBinary(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
			continue
		}
		t.Logf("%s: %v", c.name, err)
	}
}

func TestCPUStateMarshalRejectsInvalid(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*vm.CPUState)
		want string
	}{
		{"unsorted MSRs", func(s *vm.CPUState) { s.MSRs[0], s.MSRs[1] = s.MSRs[1], s.MSRs[0] }, "ascending"},
		{"too many MSRs", func(s *vm.CPUState) {
			s.MSRs = make([]kvm.MSREntry, vm.MaxCPUStateMSRs+1)
			for i := range s.MSRs {
				s.MSRs[i].Index = uint32(i)
			}
		}, "513 MSRs"},
		{"FPU next to XSAVE", func(s *vm.CPUState) { s.FPU.FCW = 1 }, "FPU state present"},
		{"debug flags", func(s *vm.CPUState) { s.Debug.Flags = 1 }, "debug register flags"},
		{"DPL", func(s *vm.CPUState) { s.Sregs.SS.DPL = 4 }, "segment SS"},
		{"too many XCRs", func(s *vm.CPUState) { s.XCRs = make([]kvm.XCR, 17) }, "17 XCRs"},
	} {
		st := linuxLikeState(true)
		c.mod(st)
		if _, err := st.MarshalBinary(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// FuzzCPUStateDecode feeds the decoder arbitrary bytes: it must never
// panic, and what it accepts must encode back to exactly the same bytes.
func FuzzCPUStateDecode(f *testing.F) {
	for _, withXSave := range []bool{true, false} {
		b, err := linuxLikeState(withXSave).MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-5])
	}
	small, err := (&vm.CPUState{}).MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(small)
	f.Add([]byte("FTVC\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var st vm.CPUState
		if err := st.UnmarshalBinary(data); err != nil {
			return
		}
		again, err := st.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded state does not encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs from the accepted input (%d vs %d bytes)", len(again), len(data))
		}
	})
}

func BenchmarkCPUStateCodec(b *testing.B) {
	st := linuxLikeState(true)
	enc, err := st.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		b.SetBytes(int64(len(enc)))
		for i := 0; i < b.N; i++ {
			if _, err := st.MarshalBinary(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(enc)))
		var got vm.CPUState
		for i := 0; i < b.N; i++ {
			if err := got.UnmarshalBinary(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}
