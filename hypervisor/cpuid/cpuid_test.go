package cpuid

import (
	"testing"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// allOnes is a synthetic KVM_GET_SUPPORTED_CPUID answer in which every
// register of every leaf has every bit set, so each rule has something to
// clear and each surviving bit is visible.
func allOnes() []kvm.CPUIDEntry2 {
	leaves := []struct{ fn, idx uint32 }{
		{0, 0}, {1, 0}, {4, 0}, {4, 1}, {5, 0}, {6, 0}, {7, 0}, {7, 1}, {0xa, 0},
		{0xb, 0}, {0xb, 1}, {0xb, 2}, {0xd, 0}, {0xd, 1}, {0x12, 0}, {0x14, 0}, {0x15, 0}, {0x16, 0},
		{0x1f, 0}, {0x1f, 1},
		{0x40000000, 0}, {0x40000001, 0}, {0x40000010, 0}, {0x400000ff, 0}, {0x40000100, 0},
		{0x80000000, 0}, {0x80000001, 0}, {0x80000007, 0}, {0x80000008, 0}, {0x8000000a, 0},
		{0x8000001d, 0}, {0x8000001e, 0},
	}
	var out []kvm.CPUIDEntry2
	for _, l := range leaves {
		out = append(out, kvm.CPUIDEntry2{Function: l.fn, Index: l.idx, EAX: ^uint32(0), EBX: ^uint32(0), ECX: ^uint32(0), EDX: ^uint32(0)})
	}
	return out
}

func find(t *testing.T, es []kvm.CPUIDEntry2, fn, idx uint32) *kvm.CPUIDEntry2 {
	t.Helper()
	for i := range es {
		if es[i].Function == fn && es[i].Index == idx {
			return &es[i]
		}
	}
	return nil
}

func get(e *kvm.CPUIDEntry2, r string) uint32 {
	switch r {
	case "eax":
		return e.EAX
	case "ebx":
		return e.EBX
	case "ecx":
		return e.ECX
	}
	return e.EDX
}

func TestHiddenBits(t *testing.T) {
	out := Policy(allOnes())
	for _, c := range []struct {
		name    string
		fn, idx uint32
		reg     string
		bit     uint
	}{
		{"APIC", 1, 0, "edx", 9},
		{"TSC", 1, 0, "edx", 4},
		{"HTT", 1, 0, "edx", 28},
		{"x2APIC", 1, 0, "ecx", 21},
		{"TSC-deadline", 1, 0, "ecx", 24},
		{"RDRAND", 1, 0, "ecx", 30},
		{"XSAVE", 1, 0, "ecx", 26},
		{"OSXSAVE", 1, 0, "ecx", 27},
		{"AVX", 1, 0, "ecx", 28},
		{"FMA", 1, 0, "ecx", 12},
		{"F16C", 1, 0, "ecx", 29},
		{"MONITOR", 1, 0, "ecx", 3},
		{"VMX", 1, 0, "ecx", 5},
		{"PDCM", 1, 0, "ecx", 15},
		{"PCID", 1, 0, "ecx", 17},
		{"TSC_ADJUST", 7, 0, "ebx", 1},
		{"SGX", 7, 0, "ebx", 2},
		{"HLE", 7, 0, "ebx", 4},
		{"AVX2", 7, 0, "ebx", 5},
		{"INVPCID", 7, 0, "ebx", 10},
		{"RTM", 7, 0, "ebx", 11},
		{"AVX512F", 7, 0, "ebx", 16},
		{"RDSEED", 7, 0, "ebx", 18},
		{"Intel PT", 7, 0, "ebx", 25},
		{"PKU", 7, 0, "ecx", 3},
		{"OSPKE", 7, 0, "ecx", 4},
		{"WAITPKG", 7, 0, "ecx", 5},
		{"RDPID", 7, 0, "ecx", 22},
		{"SGX_LC", 7, 0, "ecx", 30},
		{"AMX-TILE", 7, 0, "edx", 24},
		{"AVX-VNNI", 7, 1, "eax", 4},
		{"SVM", 0x80000001, 0, "ecx", 2},
		{"PERFCTR_CORE", 0x80000001, 0, "ecx", 23},
		{"MWAITX", 0x80000001, 0, "ecx", 29},
		{"AMD APIC", 0x80000001, 0, "edx", 9},
		{"AMD TSC", 0x80000001, 0, "edx", 4},
		{"RDTSCP", 0x80000001, 0, "edx", 27},
		{"invariant TSC", 0x80000007, 0, "edx", 8},
	} {
		e := find(t, out, c.fn, c.idx)
		if e == nil {
			t.Errorf("%s: leaf %#x.%d missing", c.name, c.fn, c.idx)
			continue
		}
		if get(e, c.reg)&(1<<c.bit) != 0 {
			t.Errorf("%s (leaf %#x.%d %s bit %d) still set", c.name, c.fn, c.idx, c.reg, c.bit)
		}
	}
}

func TestUnrelatedBitsSurvive(t *testing.T) {
	out := Policy(allOnes())
	for _, c := range []struct {
		name    string
		fn, idx uint32
		reg     string
		bit     uint
	}{
		{"FPU", 1, 0, "edx", 0},
		{"MSR", 1, 0, "edx", 5},
		{"PAE", 1, 0, "edx", 6},
		{"CX8", 1, 0, "edx", 8},
		{"PGE", 1, 0, "edx", 13},
		{"CMOV", 1, 0, "edx", 15},
		{"FXSR", 1, 0, "edx", 24},
		{"SSE", 1, 0, "edx", 25},
		{"SSE2", 1, 0, "edx", 26},
		{"SSE3", 1, 0, "ecx", 0},
		{"SSSE3", 1, 0, "ecx", 9},
		{"CX16", 1, 0, "ecx", 13},
		{"SSE4.2", 1, 0, "ecx", 20},
		{"POPCNT", 1, 0, "ecx", 23},
		{"AES", 1, 0, "ecx", 25},
		{"hypervisor", 1, 0, "ecx", 31},
		{"FSGSBASE", 7, 0, "ebx", 0},
		{"BMI1", 7, 0, "ebx", 3},
		{"SMEP", 7, 0, "ebx", 7},
		{"ERMS", 7, 0, "ebx", 9},
		{"SMAP", 7, 0, "ebx", 20},
		{"SHA", 7, 0, "ebx", 29},
		{"UMIP", 7, 0, "ecx", 2},
		{"MD_CLEAR", 7, 0, "edx", 10},
		{"SPEC_CTRL", 7, 0, "edx", 26},
		{"LAHF_LM", 0x80000001, 0, "ecx", 0},
		{"ABM", 0x80000001, 0, "ecx", 5},
		{"SYSCALL", 0x80000001, 0, "edx", 11},
		{"NX", 0x80000001, 0, "edx", 20},
		{"1G pages", 0x80000001, 0, "edx", 26},
		{"LM", 0x80000001, 0, "edx", 29},
	} {
		e := find(t, out, c.fn, c.idx)
		if e == nil || get(e, c.reg)&(1<<c.bit) == 0 {
			t.Errorf("%s (leaf %#x.%d %s bit %d) was cleared", c.name, c.fn, c.idx, c.reg, c.bit)
		}
	}
	for _, fn := range []uint32{0, 0x80000000} {
		if e := find(t, out, fn, 0); e == nil || e.EAX != ^uint32(0) || e.EBX != ^uint32(0) {
			t.Errorf("leaf %#x changed: %+v", fn, e)
		}
	}
	if e := find(t, out, 0x80000008, 0); e.EAX != ^uint32(0) || e.ECX != 0xffff0f00 {
		t.Errorf("leaf 0x80000008: EAX %#x (address sizes must survive), ECX %#x", e.EAX, e.ECX)
	}
}

func TestPVLeavesRemoved(t *testing.T) {
	out := Policy(allOnes())
	for _, e := range out {
		if e.Function >= 0x40000000 && e.Function <= 0x400000ff {
			t.Errorf("PV leaf %#x still present", e.Function)
		}
	}
	// 0x40000100 is outside KVM's range; it is left to the generic rules.
	if find(t, out, 0x40000100, 0) == nil {
		t.Error("leaf 0x40000100 dropped")
	}
	if got, want := len(out), len(allOnes())-4; got != want {
		t.Errorf("%d entries, want %d", got, want)
	}
}

func TestZeroedLeaves(t *testing.T) {
	out := Policy(allOnes())
	for _, l := range []struct{ fn, idx uint32 }{
		{5, 0}, {6, 0}, {0xa, 0}, {0xd, 0}, {0xd, 1}, {0x12, 0}, {0x14, 0}, {0x15, 0}, {0x16, 0}, {0x8000000a, 0}, {0x8000001e, 0},
	} {
		e := find(t, out, l.fn, l.idx)
		if e == nil {
			t.Errorf("leaf %#x.%d removed, want it kept and zeroed", l.fn, l.idx)
			continue
		}
		if e.EAX|e.EBX|e.ECX|e.EDX != 0 {
			t.Errorf("leaf %#x.%d = %+v, want zeros", l.fn, l.idx, *e)
		}
	}
	if e := find(t, out, 0x80000007, 0); e.EDX != 0 || e.EAX != ^uint32(0) {
		t.Errorf("leaf 0x80000007 = %+v: want EDX 0, others kept", *e)
	}
}

func TestSingleCPUTopology(t *testing.T) {
	out := Policy(allOnes())
	for _, c := range []struct {
		fn, idx            uint32
		eax, ebx, ecx, edx uint32
	}{
		{1, 0, ^uint32(0), 0x0001ffff, 0x82d96e17, 0xcfbffdef},
		{4, 0, 0x3fff, ^uint32(0), ^uint32(0), ^uint32(0)},
		{0xb, 0, 0, 1, 0x100, 0},
		{0xb, 1, 0, 1, 0x201, 0},
		{0xb, 2, 0, 0, 2, 0},
		{0x1f, 1, 0, 1, 0x201, 0},
		{0x8000001d, 0, 0x3fff, ^uint32(0), ^uint32(0), ^uint32(0)},
	} {
		e := find(t, out, c.fn, c.idx)
		if e == nil || e.EAX != c.eax || e.EBX != c.ebx || e.ECX != c.ecx || e.EDX != c.edx {
			t.Errorf("leaf %#x.%d = %+v, want EAX %#x EBX %#x ECX %#x EDX %#x", c.fn, c.idx, e, c.eax, c.ebx, c.ecx, c.edx)
		}
	}
}

func TestHypervisorBitForcedAndInputUntouched(t *testing.T) {
	in := []kvm.CPUIDEntry2{{Function: 1, ECX: 1 << 21, EDX: 1<<9 | 1}, {Function: 0x40000001, EAX: 0xff}}
	out := Policy(in)
	if len(out) != 1 || out[0].ECX != 1<<31 || out[0].EDX != 1 || out[0].EBX != 1<<16 {
		t.Errorf("Policy = %+v", out)
	}
	if in[0].ECX != 1<<21 || in[0].EDX != 1<<9|1 || len(in) != 2 {
		t.Error("Policy modified its input")
	}
	if got := Policy(nil); len(got) != 0 {
		t.Errorf("Policy(nil) = %+v", got)
	}
}
