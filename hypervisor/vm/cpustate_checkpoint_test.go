package vm_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

// runMemwalkUntil runs v until the guest has printed stopAt bytes in all
// (0: to power-off). The stop happens inside the OUT exit of byte stopAt,
// so the guest stops with that OUT not yet completed by KVM.
func runMemwalkUntil(t *testing.T, v *vm.VM, console *hookConsole, stopAt int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	console.onByte = func(n int) {
		if n == stopAt {
			cancel()
		}
	}
	reason, err := v.Run(ctx)
	console.onByte = nil
	want := vm.StoppedCancelled
	if stopAt == 0 {
		want = vm.StoppedPowerOff
	}
	if err != nil || reason != want {
		t.Fatalf("run to byte %d: stopped with %v, %v; want %v", stopAt, reason, err, want)
	}
	if stopAt != 0 && console.buf.Len() != stopAt {
		t.Fatalf("stopped after %d bytes, want %d", console.buf.Len(), stopAt)
	}
}

func captureCPU(t *testing.T, v *vm.VM) *vm.CPUState {
	t.Helper()
	st := &vm.CPUState{}
	if err := v.CaptureCPU(st); err != nil {
		t.Fatal(err)
	}
	return st
}

// stateDiff names the parts in which two vCPU states differ.
func stateDiff(a, b *vm.CPUState) string {
	var d []string
	if a.Regs != b.Regs {
		d = append(d, fmt.Sprintf("regs %+v vs %+v", a.Regs, b.Regs))
	}
	if a.Sregs != b.Sregs {
		d = append(d, fmt.Sprintf("sregs %+v vs %+v", a.Sregs, b.Sregs))
	}
	if a.HasXSave != b.HasXSave || a.XSave != b.XSave || a.FPU != b.FPU {
		d = append(d, "floating-point state")
	}
	if fmt.Sprint(a.XCRs) != fmt.Sprint(b.XCRs) {
		d = append(d, fmt.Sprintf("XCRs %+v vs %+v", a.XCRs, b.XCRs))
	}
	if a.Events != b.Events {
		d = append(d, fmt.Sprintf("events %+v vs %+v", a.Events, b.Events))
	}
	if a.Debug != b.Debug {
		d = append(d, fmt.Sprintf("debug %+v vs %+v", a.Debug, b.Debug))
	}
	if fmt.Sprint(a.MSRs) != fmt.Sprint(b.MSRs) {
		for i := 0; i < len(a.MSRs) && i < len(b.MSRs); i++ {
			if a.MSRs[i] != b.MSRs[i] {
				d = append(d, fmt.Sprintf("MSR %+v vs %+v", a.MSRs[i], b.MSRs[i]))
			}
		}
		if len(a.MSRs) != len(b.MSRs) {
			d = append(d, fmt.Sprintf("%d vs %d MSRs", len(a.MSRs), len(b.MSRs)))
		}
	}
	return fmt.Sprint(d)
}

// firstDiff describes where two outputs part.
func firstDiff(a, b string) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return fmt.Sprintf("equal for %d bytes, then %q vs %q (lengths %d and %d)",
		i, a[i:min(len(a), i+8)], b[i:min(len(b), i+8)], len(a), len(b))
}

// checkpoint is what a primary ships after a kick: its vCPU state, as it
// crosses the log channel, and the pages its guest wrote.
type checkpoint struct {
	state *vm.CPUState
	enc   []byte
	pages map[int][]byte
}

// resume creates a VM from the same config and loads cp into it.
func resume(t *testing.T, cp *checkpoint, withPages bool) (*vm.VM, *hookConsole) {
	t.Helper()
	v, console := newMemwalk(t)
	if withPages {
		for p, data := range cp.pages {
			copy(v.Memory()[p*vm.DirtyPageSize:], data)
		}
	}
	var st vm.CPUState
	if err := st.UnmarshalBinary(cp.enc); err != nil {
		t.Fatal(err)
	}
	if err := v.RestoreCPU(&st); err != nil {
		t.Fatal(err)
	}
	return v, console
}

// TestCheckpointResumesOnAnotherVM is a resync by checkpoint with the
// memwalk guest: VM A runs part way and stops in the middle of an exit;
// its vCPU state (encoded and decoded, as it crosses the log channel) and
// the pages its guest dirtied are loaded into VM B, created from the same
// config. B must then be A: the same vCPU state at once, and after both
// run on, the same state and memory at the same later exit and the same
// output to power-off. Two controls show the comparison catches a
// checkpoint that lacks the memory or is one instruction off.
func TestCheckpointResumesOnAnotherVM(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	const stopAt, later = 250, 200

	a, aOut := newMemwalk(t)
	if err := a.EnableDirtyLog(); err != nil {
		t.Fatal(err)
	}
	runMemwalkUntil(t, a, aOut, stopAt)
	atCheckpoint := a.Stats().SyncExits
	st := captureCPU(t, a)
	if st.Regs.RIP != memwalkOutRIP {
		t.Fatalf("captured RIP %#x, want %#x: CaptureCPU must complete the OUT the guest stopped in", st.Regs.RIP, memwalkOutRIP)
	}
	bm, err := a.DirtyPages(nil)
	if err != nil {
		t.Fatal(err)
	}
	cp := &checkpoint{state: st, pages: map[int][]byte{}}
	for _, p := range pagesIn(bm) {
		cp.pages[p] = bytes.Clone(a.Memory()[p*vm.DirtyPageSize : (p+1)*vm.DirtyPageSize])
	}
	if len(cp.pages) != memwalkPages+1 { // the walked pages and the code page (first fetched)
		t.Errorf("%d dirty pages after %d steps, want %d", len(cp.pages), stopAt, memwalkPages+1)
	}
	if cp.enc, err = st.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpoint at exit #%d: vCPU state %d bytes (XSAVE %v, %d XCRs, %d MSRs), %d dirty pages",
		atCheckpoint, len(cp.enc), st.HasXSave, len(st.XCRs), len(st.MSRs), len(cp.pages))

	b, bOut := resume(t, cp, true)
	if got := captureCPU(t, b); !got.Equal(st) {
		t.Fatalf("B's vCPU state right after RestoreCPU differs from A's: %s", stateDiff(got, st))
	}

	// Both run on to the same later exit: the same vCPU state and memory.
	runMemwalkUntil(t, a, aOut, stopAt+later)
	runMemwalkUntil(t, b, bOut, later)
	if a.Stats().SyncExits-atCheckpoint != b.Stats().SyncExits {
		t.Fatalf("A took %d exits after the checkpoint, B %d", a.Stats().SyncExits-atCheckpoint, b.Stats().SyncExits)
	}
	sa, sb := captureCPU(t, a), captureCPU(t, b)
	if !sa.Equal(sb) {
		t.Fatalf("%d bytes later the vCPU states differ: %s", later, stateDiff(sa, sb))
	}
	if !bytes.Equal(a.Memory(), b.Memory()) {
		t.Fatalf("%d bytes later guest memory differs", later)
	}
	t.Logf("%d bytes (%d exits) after the checkpoint: equal vCPU state (RIP %#x, ESI %#x) and memory",
		later, b.Stats().SyncExits, sa.Regs.RIP, uint32(sa.Regs.RSI))

	// And on to power-off.
	runMemwalkUntil(t, a, aOut, 0)
	runMemwalkUntil(t, b, bOut, 0)
	aRest, bAll := aOut.buf.String()[stopAt:], bOut.buf.String()
	if aRest != bAll {
		t.Fatalf("after the checkpoint A printed something else than B: %s", firstDiff(aRest, bAll))
	}
	if sa, sb := captureCPU(t, a), captureCPU(t, b); !sa.Equal(sb) {
		t.Fatalf("at power-off the vCPU states differ: %s", stateDiff(sa, sb))
	}
	if !bytes.Equal(a.Memory(), b.Memory()) {
		t.Fatal("at power-off guest memory differs")
	}
	if a.Stats().SyncExits-atCheckpoint != b.Stats().SyncExits {
		t.Fatalf("A took %d exits after the checkpoint, B %d", a.Stats().SyncExits-atCheckpoint, b.Stats().SyncExits)
	}
	t.Logf("to power-off: B printed the same %d bytes as A after the checkpoint, in %d exits", len(bAll), b.Stats().SyncExits)

	// Controls: the comparison above would have caught a checkpoint
	// without the dirty pages, or one taken without completing the OUT.
	t.Run("without pages", func(t *testing.T) {
		c, cOut := resume(t, cp, false)
		runMemwalkUntil(t, c, cOut, 0)
		if cOut.buf.String() == aRest {
			t.Fatal("a VM resumed without the dirty pages printed what A did: the test cannot see memory")
		}
		t.Logf("without the pages: %s", firstDiff(aRest, cOut.buf.String()))
	})
	t.Run("one instruction back", func(t *testing.T) {
		back := *cp
		back.state = &vm.CPUState{}
		*back.state = *cp.state
		back.state.Regs.RIP-- // on the OUT again, as if KVM had not completed it
		var err error
		if back.enc, err = back.state.MarshalBinary(); err != nil {
			t.Fatal(err)
		}
		c, cOut := resume(t, &back, true)
		runMemwalkUntil(t, c, cOut, 0)
		if cOut.buf.String() == aRest {
			t.Fatal("a VM resumed on the OUT printed what A did")
		}
		t.Logf("resumed on the OUT: %s", firstDiff(aRest, cOut.buf.String()))
	})
}

// TestCheckpointLinuxState captures the vCPU of a 64-bit Linux guest once
// it is up (at its ready line), loads the state into a second VM made from
// the same config, and reads it back: KVM must take every part of a real
// long-mode state (the SYSCALL MSRs Linux set, the machine-check banks,
// the MTRRs, XCR0 and the XSAVE image) and give back exactly the same.
func TestCheckpointLinuxState(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	dir := testimage.Dir(t)
	m, err := images.Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := vm.Config{
		Kernel:    filepath.Join(dir, m.Kernel),
		Initrd:    filepath.Join(dir, m.Initrd),
		Cmdline:   m.Cmdline,
		MemoryMiB: 256,
	}
	console := &hookConsole{}
	cfg.Console = console
	a, err := vm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	lineStart := 0
	console.onByte = func(n int) {
		out := console.buf.Bytes()
		if out[n-1] != '\n' {
			return
		}
		if bytes.Contains(out[lineStart:], []byte("ftvm-guest ready")) {
			cancel()
		}
		lineStart = n
	}
	start := time.Now()
	reason, err := a.Run(ctx)
	if err != nil || reason != vm.StoppedCancelled {
		t.Fatalf("boot stopped with %v, %v; want a stop at the ready line; console:\n%s", reason, err, console.buf.String())
	}
	st := captureCPU(t, a)
	enc, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	msr := map[uint32]uint64{}
	for _, e := range st.MSRs {
		msr[e.Index] = e.Data
	}
	var banks int
	var nonzero []string
	for _, e := range st.MSRs {
		if e.Index >= 0x400 && e.Index < 0x480 {
			banks++
		}
		if e.Data != 0 {
			nonzero = append(nonzero, fmt.Sprintf("%#x=%#x", e.Index, e.Data))
		}
	}
	t.Logf("ready line after %v, %d exits; vCPU state at RIP %#x: %d bytes encoded; XSAVE %v, XCRs %+v, %d MSRs (%d of them machine-check banks); EFER %#x CR0 %#x CR4 %#x; events %+v",
		time.Since(start).Round(time.Millisecond), a.Stats().SyncExits, st.Regs.RIP, len(enc), st.HasXSave, st.XCRs, len(st.MSRs), banks,
		st.Sregs.EFER, st.Sregs.CR0, st.Sregs.CR4, st.Events)
	t.Logf("non-zero MSRs: %s", strings.Join(nonzero, " "))
	const eferLMA = 1 << 10
	if st.Sregs.EFER&eferLMA == 0 || st.Sregs.CS.L != 1 || msr[0xc0000082] == 0 {
		t.Fatalf("not a 64-bit Linux state: EFER %#x, CS.L %d, LSTAR %#x", st.Sregs.EFER, st.Sregs.CS.L, msr[0xc0000082])
	}

	cfg.Console = nil
	b, err := vm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var loaded vm.CPUState
	if err := loaded.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if err := b.RestoreCPU(&loaded); err != nil {
		t.Fatal(err)
	}
	if got := captureCPU(t, b); !got.Equal(st) {
		t.Fatalf("the restored Linux vCPU reads back differently: %s", stateDiff(got, st))
	}
}

// BenchmarkCaptureCPU measures CaptureCPU (a dozen ioctls, among them the
// MSR and CPUID lists it derives the MSR set from) and RestoreCPU (which
// enters KVM_RUN once, without running the guest), on a vCPU that has not
// run.
func BenchmarkCaptureCPU(b *testing.B) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	code, err := os.ReadFile("testdata/guests/memwalk.bin")
	if err != nil {
		b.Fatal(err)
	}
	v, err := vm.New(vm.Config{RawCode: code, MemoryMiB: 16, Console: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	var st vm.CPUState
	b.Run("capture", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := v.CaptureCPU(&st); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("restore", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := v.RestoreCPU(&st); err != nil {
				b.Fatal(err)
			}
		}
	})
}
