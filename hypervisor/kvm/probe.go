//go:build linux && amd64

package kvm

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"time"
)

// Layout of the probe guest's physical memory.
const (
	probeMemSize = 0x4000     // 16 KiB: IVT/BDA page, code page, spare
	probeEntry   = 0x1000     // code is loaded here, out of the real-mode IVT
	probeTSSAddr = 0xfffbd000 // Intel real-mode TSS pages, above guest RAM
)

// probeLoop returns the probe guest: a CPL-0 real-mode countdown of
// iterations trips round a two-instruction loop, then HLT. In 16-bit code
// the 0x66 prefix selects 32-bit operands, so ECX can hold any uint32.
func probeLoop(iterations uint32) []byte {
	code := []byte{
		0x66, 0xB9, 0, 0, 0, 0, // 0x00: mov ecx, imm32 (patched below)
		0x66, 0x49, // 0x06: dec ecx (0x49 is "dec cx"; 0x66 widens it)
		0x75, 0xFC, // 0x08: jnz 0x06 (rel8 -4, from the next instruction at 0x0a)
		0xF4, // 0x0a: hlt
	}
	binary.LittleEndian.PutUint32(code[2:], iterations)
	return code
}

// MeasureRing0Loop runs a tiny real-mode guest that counts ECX down from
// iterations (two ring-0 instructions per trip) and halts, and returns the
// time spent inside KVM_RUN until the HLT exit.
//
// It tells hardware-backed KVM, where a million iterations take about a
// millisecond, from a KVM that emulates ring-0 code instruction by
// instruction, where they take seconds. iterations must be at least 1.
func MeasureRing0Loop(iterations uint32) (time.Duration, error) {
	if iterations == 0 {
		return 0, fmt.Errorf("ring-0 loop probe: iterations must be at least 1")
	}
	sys, err := Open("")
	if err != nil {
		return 0, err
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		return 0, err
	}
	defer vm.Close()
	if err := vm.SetTSSAddr(probeTSSAddr); err != nil {
		return 0, err
	}
	mem, err := AllocateMemory(probeMemSize)
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	code := probeLoop(iterations)
	copy(mem.Bytes()[probeEntry:], code)
	if err := vm.SetUserMemoryRegion(0, 0, mem.Bytes(), 0); err != nil {
		return 0, err
	}
	vcpu, err := vm.CreateVCPU(0)
	if err != nil {
		return 0, err
	}
	defer vcpu.Close()
	if err := setRealModeEntry(vcpu, probeEntry); err != nil {
		return 0, err
	}

	// Stay on one thread so the measurement isn't split across migrations.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var inGuest time.Duration
	for {
		start := time.Now()
		exit, err := vcpu.Run()
		inGuest += time.Since(start)
		if err != nil {
			return 0, fmt.Errorf("ring-0 loop probe: %w", err)
		}
		switch exit.Kind {
		case ExitInterrupted:
			continue // a stray signal, not the guest: just re-enter
		case ExitHLT:
		default:
			return 0, fmt.Errorf("ring-0 loop probe: unexpected exit %v (%+v)", exit.Kind, exit)
		}
		break
	}
	var regs Regs
	if err := vcpu.GetRegs(&regs); err != nil {
		return 0, err
	}
	if wantRIP := uint64(probeEntry + len(code)); regs.RIP != wantRIP || uint32(regs.RCX) != 0 {
		return 0, fmt.Errorf("ring-0 loop probe: halted with RIP=%#x ECX=%#x, want RIP=%#x ECX=0", regs.RIP, uint32(regs.RCX), wantRIP)
	}
	return inGuest, nil
}

// setRealModeEntry points a freshly created vCPU at physical address entry
// in real mode: CS base and selector 0 (reset state has CS at 0xffff0000),
// IP = entry, flags with only the always-one bit 1 set.
func setRealModeEntry(vcpu *VCPU, entry uint64) error {
	var s Sregs
	if err := vcpu.GetSregs(&s); err != nil {
		return err
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := vcpu.SetSregs(&s); err != nil {
		return err
	}
	return vcpu.SetRegs(&Regs{RIP: entry, RFLAGS: 0x2})
}
