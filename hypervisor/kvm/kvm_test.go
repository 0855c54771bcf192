//go:build linux && amd64

package kvm_test

import (
	"encoding/binary"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// Tests that need /dev/kvm start with kvmhost.RanElsewhere, which runs them
// inside a nested KVM host when this machine's KVM can't run ring-0 code at
// speed (or is missing), and reports the outcome here.
func TestMain(m *testing.M) { os.Exit(kvmhost.TestMain(m)) }

// Guest physical layout of the tiny real-mode guests below. Real mode keeps
// them to a few hand-assembled bytes: CS=DS=0, so offsets are addresses.
const (
	guestMemSize = 0x4000 // RAM at 0..16 KiB
	codeAddr     = 0x1000 // above the real-mode IVT
	dataAddr     = 0x2000 // scratch RAM the guests and tests share
	mmioAddr     = 0x8000 // no slot here: accesses exit as MMIO
)

type guest struct {
	sys  *kvm.System
	vm   *kvm.VM
	mem  *kvm.Memory
	vcpu *kvm.VCPU
}

// newGuest creates a VM with guestMemSize of RAM in slot 0, loads code at
// codeAddr and points vCPU 0 at it in real mode.
func newGuest(t *testing.T, code []byte, slotFlags uint32) *guest {
	t.Helper()
	g := &guest{}
	var err error
	if g.sys, err = kvm.Open(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.sys.Close() })
	if g.vm, err = g.sys.CreateVM(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.vm.Close() })
	if err := g.vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Fatal(err)
	}
	if g.mem, err = kvm.AllocateMemory(guestMemSize); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.mem.Close() }) // runs after vm.Close (LIFO)
	copy(g.mem.Bytes()[codeAddr:], code)
	if err := g.vm.SetUserMemoryRegion(0, 0, g.mem.Bytes(), slotFlags); err != nil {
		t.Fatal(err)
	}
	if g.vcpu, err = g.vm.CreateVCPU(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.vcpu.Close() })

	var s kvm.Sregs
	if err := g.vcpu.GetSregs(&s); err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0 // reset state has CS base 0xffff0000
	if err := g.vcpu.SetSregs(&s); err != nil {
		t.Fatal(err)
	}
	if err := g.vcpu.SetRegs(&kvm.Regs{RIP: codeAddr, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return g
}

// next runs the guest to its next exit the guest caused, passing over
// interruptions by stray signals.
func (g *guest) next(t *testing.T) kvm.Exit {
	t.Helper()
	for {
		e, err := g.vcpu.Run()
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != kvm.ExitInterrupted {
			return e
		}
	}
}

func (g *guest) regs(t *testing.T) kvm.Regs {
	t.Helper()
	var r kvm.Regs
	if err := g.vcpu.GetRegs(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

// lockThread pins the test goroutine to its OS thread for the rest of the
// test, as every vCPU loop must be.
func lockThread(t testing.TB) {
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
}

func TestSystem(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	sys, err := kvm.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	if n := sys.VCPUMmapSize(); n < 4096 {
		t.Errorf("VCPUMmapSize = %d, want at least a page", n)
	}
	for _, c := range []kvm.Cap{kvm.CapUserMemory, kvm.CapImmediateExit, kvm.CapSetGuestDebug} {
		if n, err := sys.CheckExtension(c); err != nil || n <= 0 {
			t.Errorf("CheckExtension(%d) = %d, %v; want supported", c, n, err)
		}
	}
	slots, err := sys.CheckExtension(kvm.CapNrMemslots)
	if err != nil {
		t.Fatal(err)
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	var vendor []byte
	for _, e := range cpuid {
		if e.Function == 0 {
			vendor = binary.LittleEndian.AppendUint32(vendor, e.EBX)
			vendor = binary.LittleEndian.AppendUint32(vendor, e.EDX)
			vendor = binary.LittleEndian.AppendUint32(vendor, e.ECX)
		}
	}
	if len(vendor) == 0 {
		t.Fatalf("SupportedCPUID has no leaf 0 among %d entries", len(cpuid))
	}
	t.Logf("kvm_run mapping %d bytes, %d memory slots, %d CPUID entries, vendor %q", sys.VCPUMmapSize(), slots, len(cpuid), vendor)
}

// TestRing0Loop is issue 2's first check: a CPL-0 guest loop of a million
// iterations runs to HLT, at whatever speed this KVM host manages.
func TestRing0Loop(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	const iterations = 1_000_000
	code := []byte{
		0x66, 0xB9, 0, 0, 0, 0, // 0x00: mov ecx, iterations (0x66: 32-bit operand in 16-bit code)
		0x66, 0x49, // 0x06: dec ecx
		0x75, 0xFC, // 0x08: jnz 0x06
		0xF4, // 0x0a: hlt
	}
	binary.LittleEndian.PutUint32(code[2:], iterations)
	g := newGuest(t, code, 0)
	lockThread(t)

	start := time.Now()
	e := g.next(t)
	elapsed := time.Since(start)
	if e.Kind != kvm.ExitHLT {
		t.Fatalf("exit %v (%+v), want HLT", e.Kind, e)
	}
	r := g.regs(t)
	if r.RIP != codeAddr+uint64(len(code)) || uint32(r.RCX) != 0 {
		t.Fatalf("halted at RIP=%#x with ECX=%d, want RIP=%#x ECX=0", r.RIP, uint32(r.RCX), codeAddr+len(code))
	}
	t.Logf("%d ring-0 loop iterations (%d instructions) ran to HLT in %v (%.2f ns/instruction)",
		iterations, 2*iterations+2, elapsed, float64(elapsed.Nanoseconds())/float64(2*iterations+2))
}

func TestMeasureRing0Loop(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	d, err := kvm.MeasureRing0Loop(2_000_000)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MeasureRing0Loop(2M) = %v", d)
}

// TestPIO is issue 2's second check: port I/O exits carry the right port,
// width, direction and data, and IN data written by the VMM reaches the guest.
func TestPIO(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	code := []byte{
		0xBA, 0xF8, 0x03, // 0x00: mov dx, 0x3f8  (COM1 data)
		0xB0, 0x41, //       0x03: mov al, 'A'
		0xEE,             // 0x05: out dx, al
		0xBA, 0x10, 0x05, // 0x06: mov dx, 0x510
		0xB8, 0xEF, 0xBE, // 0x09: mov ax, 0xbeef
		0xEF,             // 0x0c: out dx, ax
		0xED,             // 0x0d: in ax, dx
		0xBA, 0x11, 0x05, // 0x0e: mov dx, 0x511
		0xEF, // 0x11: out dx, ax   (echo what IN returned)
		0xF4, // 0x12: hlt
	}
	g := newGuest(t, code, 0)
	lockThread(t)

	expectIO := func(port uint16, size uint8, in bool) kvm.IOExit {
		t.Helper()
		e := g.next(t)
		if e.Kind != kvm.ExitIO {
			t.Fatalf("exit %v (%+v), want IO on port %#x", e.Kind, e, port)
		}
		io := e.IO
		if io.Port != port || io.Size != size || io.In != in || io.Count != 1 || len(io.Data) != int(size) {
			t.Fatalf("IO exit %+v, want port %#x size %d in=%v count 1", io, port, size, in)
		}
		return io
	}

	if io := expectIO(0x3f8, 1, false); io.Data[0] != 'A' {
		t.Fatalf("OUT to 0x3f8 wrote %#x, want 'A'", io.Data[0])
	}
	if io := expectIO(0x510, 2, false); binary.LittleEndian.Uint16(io.Data) != 0xbeef {
		t.Fatalf("OUT to 0x510 wrote %#x, want 0xbeef", binary.LittleEndian.Uint16(io.Data))
	}
	in := expectIO(0x510, 2, true)
	binary.LittleEndian.PutUint16(in.Data, 0x1234)
	if io := expectIO(0x511, 2, false); binary.LittleEndian.Uint16(io.Data) != 0x1234 {
		t.Fatalf("guest echoed %#x from IN, want 0x1234 as supplied", binary.LittleEndian.Uint16(io.Data))
	}
	if e := g.next(t); e.Kind != kvm.ExitHLT {
		t.Fatalf("exit %v, want HLT", e.Kind)
	}
	if r := g.regs(t); r.RIP != codeAddr+uint64(len(code)) || uint16(r.RAX) != 0x1234 {
		t.Fatalf("halted at RIP=%#x AX=%#x, want RIP=%#x AX=0x1234", r.RIP, uint16(r.RAX), codeAddr+len(code))
	}
}

// TestPIORoundTrip times OUT exits, the unit cost of every device access.
func TestPIORoundTrip(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	code := []byte{
		0xEE,       // 0x00: out dx, al
		0xEB, 0xFD, // 0x01: jmp 0x00
	}
	g := newGuest(t, code, 0)
	lockThread(t)
	const n = 2000
	start := time.Now()
	for i := range n {
		if e := g.next(t); e.Kind != kvm.ExitIO {
			t.Fatalf("exit %d: %v, want IO", i, e.Kind)
		}
	}
	d := time.Since(start)
	t.Logf("%d OUT exits in %v: %v per exit round trip", n, d, d/n)

	// The exit loop's per-exit work, Run plus a register read for the
	// divergence check, must not allocate.
	var r kvm.Regs
	allocs := testing.AllocsPerRun(200, func() {
		e, err := g.vcpu.Run()
		if err != nil || (e.Kind != kvm.ExitIO && e.Kind != kvm.ExitInterrupted) {
			t.Fatalf("Run = %v, %v; want IO", e.Kind, err)
		}
		if err := g.vcpu.GetRegs(&r); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Run + GetRegs allocate %v times per exit, want 0", allocs)
	}
}

func TestMMIO(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	code := []byte{
		0xB0, 0x5A, //       0x00: mov al, 0x5a
		0xA2, 0x00, 0x80, // 0x02: mov [0x8000], al
		0xA0, 0x04, 0x80, // 0x05: mov al, [0x8004]
		0xA2, 0x00, 0x20, // 0x08: mov [0x2000], al
		0xF4, // 0x0b: hlt
	}
	g := newGuest(t, code, 0)
	lockThread(t)

	e := g.next(t)
	if e.Kind != kvm.ExitMMIO || e.MMIO.Addr != mmioAddr || !e.MMIO.IsWrite || len(e.MMIO.Data) != 1 || e.MMIO.Data[0] != 0x5a {
		t.Fatalf("exit %v %+v, want 1-byte MMIO write of 0x5a to %#x", e.Kind, e.MMIO, mmioAddr)
	}
	e = g.next(t)
	if e.Kind != kvm.ExitMMIO || e.MMIO.Addr != mmioAddr+4 || e.MMIO.IsWrite || len(e.MMIO.Data) != 1 {
		t.Fatalf("exit %v %+v, want 1-byte MMIO read at %#x", e.Kind, e.MMIO, mmioAddr+4)
	}
	e.MMIO.Data[0] = 0xc3
	if e = g.next(t); e.Kind != kvm.ExitHLT {
		t.Fatalf("exit %v, want HLT", e.Kind)
	}
	if got := g.mem.Bytes()[dataAddr]; got != 0xc3 {
		t.Fatalf("guest stored %#x from its MMIO read, want 0xc3 as supplied", got)
	}
}

// TestKick is issue 3's kick requirement: a guest spinning without exits is
// stopped by a Kicker from another goroutine, and runs on afterwards.
func TestKick(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	code := []byte{
		0x80, 0x3E, 0x00, 0x20, 0x00, // 0x00: cmp byte [0x2000], 0
		0x74, 0xF9, // 0x05: je 0x00   (spin while the flag is 0: no exits)
		0xF4, // 0x07: hlt
	}
	g := newGuest(t, code, 0)
	lockThread(t)
	k, err := g.vcpu.NewKicker()
	if err != nil {
		t.Fatal(err)
	}

	kicked := make(chan time.Time, 1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		kicked <- time.Now()
		if err := k.Kick(); err != nil {
			t.Error(err)
		}
	}()
	start := time.Now()
	var e kvm.Exit
	// A stray signal before the kick would also interrupt; only an
	// interruption after the kick counts.
	for {
		if e, err = g.vcpu.Run(); err != nil {
			t.Fatal(err)
		}
		if e.Kind != kvm.ExitInterrupted || len(kicked) == 1 {
			break
		}
	}
	returned := time.Now()
	if e.Kind != kvm.ExitInterrupted {
		t.Fatalf("Run returned %v, want INTR after the kick", e.Kind)
	}
	kickAt := <-kicked
	t.Logf("Run returned %v after the kick (guest ran %v)", returned.Sub(kickAt), returned.Sub(start))
	if r := g.regs(t); r.RIP != codeAddr && r.RIP != codeAddr+5 {
		t.Fatalf("interrupted at RIP=%#x, want inside the spin loop (%#x or %#x)", r.RIP, codeAddr, codeAddr+5)
	}

	// While immediate_exit is still set, Run must not enter the guest.
	g.mem.Bytes()[dataAddr] = 1
	if e, err = g.vcpu.Run(); err != nil || e.Kind != kvm.ExitInterrupted {
		t.Fatalf("Run with immediate_exit set = %v, %v; want INTR", e.Kind, err)
	}
	if r := g.regs(t); r.RIP == codeAddr+uint64(len(code)) {
		t.Fatalf("guest reached HLT although immediate_exit was set")
	}

	g.vcpu.SetImmediateExit(false)
	if e = g.next(t); e.Kind != kvm.ExitHLT {
		t.Fatalf("after clearing immediate_exit: exit %v, want HLT", e.Kind)
	}
	if r := g.regs(t); r.RIP != codeAddr+uint64(len(code)) {
		t.Fatalf("halted at RIP=%#x, want %#x", r.RIP, codeAddr+len(code))
	}
}

// TestKickBeforeRun covers the race a signal alone loses: the kick lands
// while the vCPU thread is outside KVM_RUN.
func TestKickBeforeRun(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	g := newGuest(t, []byte{0xEB, 0xFE}, 0) // jmp $
	lockThread(t)
	k, err := g.vcpu.NewKicker()
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Kick(); err != nil { // signal consumed now, in user space
		t.Fatal(err)
	}
	e, err := g.vcpu.Run()
	if err != nil || e.Kind != kvm.ExitInterrupted {
		t.Fatalf("Run after a kick = %v, %v; want INTR", e.Kind, err)
	}
	if r := g.regs(t); r.RIP != codeAddr {
		t.Fatalf("RIP=%#x, want %#x: the guest must not have run", r.RIP, codeAddr)
	}
}

func TestSingleStep(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	g := newGuest(t, []byte{0x90, 0x90, 0xF4}, 0) // nop; nop; hlt
	lockThread(t)
	if err := g.vcpu.SetGuestDebug(true); err != nil {
		t.Fatal(err)
	}
	for _, pc := range []uint64{codeAddr + 1, codeAddr + 2} {
		e := g.next(t)
		if e.Kind != kvm.ExitDebug || e.Debug.Exception != 1 || e.Debug.PC != pc {
			t.Fatalf("exit %v %+v, want single-step #DB with PC %#x", e.Kind, e.Debug, pc)
		}
	}
	if err := g.vcpu.SetGuestDebug(false); err != nil {
		t.Fatal(err)
	}
	if e := g.next(t); e.Kind != kvm.ExitHLT {
		t.Fatalf("exit %v, want HLT after single-stepping is off", e.Kind)
	}
}

func TestDirtyLog(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	code := []byte{
		0xA2, 0x00, 0x30, // 0x00: mov [0x3000], al
		0xF4, // 0x03: hlt
	}
	g := newGuest(t, code, kvm.MemLogDirtyPages)
	lockThread(t)
	if _, err := g.vm.GetDirtyLog(0, nil); err != nil { // start from a clean log
		t.Fatal(err)
	}
	if e := g.next(t); e.Kind != kvm.ExitHLT {
		t.Fatalf("exit %v, want HLT", e.Kind)
	}
	bm, err := g.vm.GetDirtyLog(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(bm) != 1 || bm[0]&(1<<3) == 0 || bm[0]&(1<<2) != 0 {
		t.Fatalf("dirty bitmap %x, want page 3 dirty and page 2 clean", bm)
	}
	bm, err = g.vm.GetDirtyLog(0, bm)
	if err != nil {
		t.Fatal(err)
	}
	if bm[0]&(1<<3) != 0 {
		t.Fatalf("dirty bitmap %x after a second read, want page 3 clean again", bm)
	}
	if _, err := g.vm.GetDirtyLog(7, nil); err == nil {
		t.Fatal("GetDirtyLog of an unused slot succeeded")
	}
}

func TestStateRoundTrip(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	g := newGuest(t, []byte{0xF4}, 0)

	const sysenterCS = 0x174
	if err := g.vcpu.SetMSRs([]kvm.MSREntry{{Index: sysenterCS, Data: 0x10}}); err != nil {
		t.Fatal(err)
	}
	msrs := []kvm.MSREntry{{Index: sysenterCS}}
	if err := g.vcpu.GetMSRs(msrs); err != nil {
		t.Fatal(err)
	}
	if msrs[0].Data != 0x10 {
		t.Fatalf("IA32_SYSENTER_CS reads back %#x, want 0x10", msrs[0].Data)
	}
	if err := g.vcpu.GetMSRs([]kvm.MSREntry{{Index: 0xdeadbeef}}); err == nil {
		t.Fatal("reading a nonexistent MSR succeeded")
	}

	var f kvm.FPU
	if err := g.vcpu.GetFPU(&f); err != nil {
		t.Fatal(err)
	}
	f.XMM[3][0], f.FPR[1][0], f.FCW = 0x42, 0x24, 0x27f
	if err := g.vcpu.SetFPU(&f); err != nil {
		t.Fatal(err)
	}
	var f2 kvm.FPU
	if err := g.vcpu.GetFPU(&f2); err != nil {
		t.Fatal(err)
	}
	if f2.XMM[3][0] != 0x42 || f2.FPR[1][0] != 0x24 || f2.FCW != 0x27f {
		t.Fatalf("FPU read back xmm3[0]=%#x fpr1[0]=%#x fcw=%#x, want 0x42 0x24 0x27f", f2.XMM[3][0], f2.FPR[1][0], f2.FCW)
	}
	// KVM_GET_FPU/KVM_SET_FPU do not carry MXCSR on the kernels we run
	// (observed: it reads back 0); a snapshot needs KVM_GET_XSAVE for it.
	t.Logf("MXCSR as KVM_GET_FPU reports it: %#x", f2.MXCSR)

	var ev kvm.VCPUEvents
	if err := g.vcpu.GetVCPUEvents(&ev); err != nil {
		t.Fatal(err)
	}
	if err := g.vcpu.SetVCPUEvents(&ev); err != nil {
		t.Fatal(err)
	}

	cpuid, err := g.sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.vcpu.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	lockThread(t)
	if e := g.next(t); e.Kind != kvm.ExitHLT {
		t.Fatalf("exit %v, want HLT", e.Kind)
	}
}

// TestInterruptInjection injects vector 0x20 into a real-mode guest whose
// handler counts and IRETs, through KVM_INTERRUPT and the interrupt window.
func TestInterruptInjection(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	code := []byte{
		// main, at 0x1000
		0xFA,       // 0x00: cli
		0xEE,       // 0x01: out dx, al    (a deterministic exit with IF=0)
		0xFB,       // 0x02: sti
		0x90,       // 0x03: nop           (STI shadow ends here)
		0xEB, 0xFE, // 0x04: jmp $         (spin with IF=1)
		0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
		// handler, at 0x1010
		0xFE, 0x06, 0x00, 0x20, // 0x10: inc byte [0x2000]
		0xEE, // 0x14: out dx, al   (tell the VMM the handler ran)
		0xCF, // 0x15: iret
	}
	g := newGuest(t, code, 0)
	ivt := g.mem.Bytes()
	binary.LittleEndian.PutUint16(ivt[0x20*4:], codeAddr+0x10) // IP
	binary.LittleEndian.PutUint16(ivt[0x20*4+2:], 0)           // CS
	var r kvm.Regs
	if err := g.vcpu.GetRegs(&r); err != nil {
		t.Fatal(err)
	}
	r.RDX, r.RSP = 0x80, 0x1000 // stack below the code
	if err := g.vcpu.SetRegs(&r); err != nil {
		t.Fatal(err)
	}
	lockThread(t)

	// At the OUT the guest has interrupts masked: ask for a window.
	if e := g.next(t); e.Kind != kvm.ExitIO {
		t.Fatalf("exit %v, want the OUT with IF=0", e.Kind)
	}
	if g.vcpu.ReadyForInterruptInjection() || g.vcpu.IFFlag() {
		t.Fatalf("ready=%v IF=%v with interrupts masked, want false false", g.vcpu.ReadyForInterruptInjection(), g.vcpu.IFFlag())
	}
	g.vcpu.SetRequestInterruptWindow(true)
	e := g.next(t)
	if e.Kind != kvm.ExitIRQWindowOpen || !g.vcpu.ReadyForInterruptInjection() {
		t.Fatalf("exit %v ready=%v, want IRQ_WINDOW_OPEN and ready", e.Kind, g.vcpu.ReadyForInterruptInjection())
	}
	g.vcpu.SetRequestInterruptWindow(false)
	if err := g.vcpu.Interrupt(0x20); err != nil {
		t.Fatal(err)
	}
	e = g.next(t)
	if e.Kind != kvm.ExitIO {
		t.Fatalf("exit %v, want the handler's OUT", e.Kind)
	}
	// Current kernels report an OUT exit with RIP still on the OUT, older
	// ones past it.
	if r := g.regs(t); r.RIP != codeAddr+0x14 && r.RIP != codeAddr+0x15 {
		t.Fatalf("handler's OUT exited at RIP=%#x, want %#x or %#x", r.RIP, codeAddr+0x14, codeAddr+0x15)
	}
	if got := g.mem.Bytes()[dataAddr]; got != 1 {
		t.Fatalf("handler count %d, want 1", got)
	}
}
