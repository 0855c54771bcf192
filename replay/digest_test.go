package replay

import (
	"encoding/hex"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// The expected digests below were computed by an independent Python
// implementation of the layouts documented in digest.go (hashlib, struct
// with '<' packing), not by this package.

func testRegs() (*kvm.Regs, *kvm.Sregs) {
	r := &kvm.Regs{RAX: 1, RBX: 2, RCX: 3, RDX: 4, RSI: 5, RDI: 6, RSP: 7, RBP: 8,
		R8: 9, R9: 10, R10: 11, R11: 12, R12: 13, R13: 14, R14: 15, R15: 16, RIP: 17, RFLAGS: 18}
	s := &kvm.Sregs{}
	for j, seg := range []*kvm.Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS, &s.TR, &s.LDT} {
		*seg = kvm.Segment{Base: 0x1000 * uint64(j+1), Limit: 0xfffff, Selector: 8 * uint16(j+1),
			Type: 11, Present: 1, S: 1, L: 1, G: 1}
	}
	s.GDT.Base, s.GDT.Limit = 0x500, 0x27
	s.IDT.Base, s.IDT.Limit = 0x600, 0xfff
	s.CR0, s.CR3, s.CR4, s.EFER, s.APICBase = 0x80050033, 0x9000, 0x20, 0x500, 0xfee00900
	s.InterruptBitmap[1] = 1 << 32
	return r, s
}

func hexOf(h [32]byte) string { return hex.EncodeToString(h[:]) }

func TestRegsDigestVectors(t *testing.T) {
	r, s := testRegs()
	if got, want := hexOf(RegsDigest(r, s, nil)), "1414afb2d2f58b8c8582be5f65330f345f379014e43754841b3620f82151e126"; got != want {
		t.Errorf("without FPU: %s, want %s", got, want)
	}
	fpu := &kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
	fpu.XMM[0][0] = 1
	if got, want := hexOf(RegsDigest(r, s, fpu)), "a45cb72baf9b3fe03d8c03f5361a55b96f428ee13c483f547fc4136745b71e01"; got != want {
		t.Errorf("with FPU: %s, want %s", got, want)
	}
	if allocs := testing.AllocsPerRun(10, func() { RegsDigest(r, s, fpu) }); allocs != 0 {
		t.Errorf("RegsDigest allocates %.0f times", allocs)
	}
}

// TestRegsDigestSensitive checks that state the CPU uses but a selector
// does not show (the hidden descriptor cache) changes the digest.
func TestRegsDigestSensitive(t *testing.T) {
	r0, s0 := testRegs()
	base := RegsDigest(r0, s0, nil)
	mutations := map[string]func(*kvm.Regs, *kvm.Sregs){
		"RFLAGS":         func(r *kvm.Regs, _ *kvm.Sregs) { r.RFLAGS ^= 1 << 9 },
		"CS hidden base": func(_ *kvm.Regs, s *kvm.Sregs) { s.CS.Base++ },
		"SS DPL":         func(_ *kvm.Regs, s *kvm.Sregs) { s.SS.DPL = 3 },
		"FS unusable":    func(_ *kvm.Regs, s *kvm.Sregs) { s.FS.Unusable = 1 },
		"TR limit":       func(_ *kvm.Regs, s *kvm.Sregs) { s.TR.Limit-- },
		"IDT limit":      func(_ *kvm.Regs, s *kvm.Sregs) { s.IDT.Limit-- },
		"CR2":            func(_ *kvm.Regs, s *kvm.Sregs) { s.CR2 = 0xdead000 },
		"pending irq":    func(_ *kvm.Regs, s *kvm.Sregs) { s.InterruptBitmap[0] = 1 << 32 },
	}
	for name, mutate := range mutations {
		r, s := testRegs()
		mutate(r, s)
		if RegsDigest(r, s, nil) == base {
			t.Errorf("%s does not change the digest", name)
		}
	}
	if RegsDigest(r0, s0, &kvm.FPU{}) == base {
		t.Error("a zero FPU digests like no FPU")
	}
}

func TestMemoryDigestVectors(t *testing.T) {
	pattern := make([]byte, 513*PageSize+100) // two groups, short last page
	for i := range pattern {
		pattern[i] = byte(i % 251)
	}
	for _, c := range []struct {
		name string
		mem  []byte
		want string
	}{
		{"empty", nil, "2952ba0ff9cbc714d98b73a38c47729a721eb6a4aadceefd354b7ae0e6360ca3"},
		{"zero page", make([]byte, PageSize), "089f665fa1ba6e32b14576c0a4c893c49cf7b9605a0915e2bb9951688669603d"},
		{"pattern", pattern, "5443cac9c02a82e45c30bb4d01c3b44a62b6c22454bdedf4fdc7ebddc95876ee"},
	} {
		if got := hexOf(MemoryDigest(c.mem)); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

func TestMemoryHasherIncremental(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	mem := make([]byte, 1300*PageSize+17) // three groups, short last page
	for i := range mem {
		mem[i] = byte(rng.Uint32())
	}
	h := NewMemoryHasher(mem)
	if h.Pages() != 1301 {
		t.Fatalf("Pages %d", h.Pages())
	}
	if h.Sum() != MemoryDigest(mem) {
		t.Fatal("fresh hasher differs from MemoryDigest")
	}
	for round := range 20 {
		var dirty []uint64
		bitmap := make([]uint64, (h.Pages()+63)/64)
		for range rng.IntN(10) + 1 {
			p := rng.IntN(h.Pages())
			off := p*PageSize + rng.IntN(min(PageSize, len(mem)-p*PageSize))
			mem[off]++
			dirty = append(dirty, uint64(p))
			bitmap[p/64] |= 1 << (p % 64)
		}
		before := h.Sum()
		var err error
		if round%2 == 0 {
			err = h.Update(dirty)
		} else {
			err = h.UpdateBitmap(bitmap)
		}
		if err != nil {
			t.Fatal(err)
		}
		got := h.Sum()
		if got != MemoryDigest(mem) {
			t.Fatalf("round %d: incremental digest differs from a full one", round)
		}
		if got == before {
			t.Fatalf("round %d: a write did not change the digest", round)
		}
	}
	if err := h.Update([]uint64{0, 1301}); err == nil || !strings.Contains(err.Error(), "page 1301") {
		t.Errorf("out-of-range page: %v", err)
	}
	bitmap := make([]uint64, 21)
	bitmap[20] = 1 << 21 // page 1301
	if err := h.UpdateBitmap(bitmap); err == nil {
		t.Error("out-of-range dirty bit accepted")
	}
}

func TestOutputHashVector(t *testing.T) {
	got := hexOf(OutputHash(OutputDiskWrite, 1, 4096, []byte("hello")))
	if want := "4f3e25f52fe422178855cacf457c0903c03a5781b53f7b88525baca40b863c69"; got != want {
		t.Errorf("%s, want %s", got, want)
	}
	if OutputHash(OutputDiskWrite, 1, 0, []byte("hello")) == OutputHash(OutputDiskWrite, 1, 4096, []byte("hello")) {
		t.Error("offset not hashed")
	}
}
