package vm

import (
	"fmt"
	"strings"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// GuestError is a VM that stopped on an error: it carries what the vCPU
// looked like and what the guest printed last, which is what someone
// debugging a dead guest needs first.
type GuestError struct {
	Err     error
	Regs    kvm.Regs
	Sregs   kvm.Sregs
	Console string // last console lines
}

func (e *GuestError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v\n", e.Err)
	r := &e.Regs
	fmt.Fprintf(&b, "vCPU registers:\n")
	fmt.Fprintf(&b, "  rip %016x  rflags %016x  rsp %016x  rbp %016x\n", r.RIP, r.RFLAGS, r.RSP, r.RBP)
	fmt.Fprintf(&b, "  rax %016x  rbx %016x  rcx %016x  rdx %016x\n", r.RAX, r.RBX, r.RCX, r.RDX)
	fmt.Fprintf(&b, "  rsi %016x  rdi %016x  r8  %016x  r9  %016x\n", r.RSI, r.RDI, r.R8, r.R9)
	fmt.Fprintf(&b, "  r10 %016x  r11 %016x  r12 %016x  r13 %016x\n", r.R10, r.R11, r.R12, r.R13)
	fmt.Fprintf(&b, "  r14 %016x  r15 %016x\n", r.R14, r.R15)
	s := &e.Sregs
	fmt.Fprintf(&b, "  cs %04x (base %x)  cr0 %x  cr2 %x  cr3 %x  cr4 %x  efer %x\n",
		s.CS.Selector, s.CS.Base, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
	if r.RIP == 0xfff0 && s.CS.Base == 0xffff0000 {
		// AMD's SVM leaves the VMCB undefined after a shutdown intercept and
		// KVM reinitialises it, so the fault's own state is gone.
		fmt.Fprintf(&b, "  (these are the CPU's reset values: KVM on AMD resets the vCPU on a triple fault)\n")
	}
	if e.Console != "" {
		fmt.Fprintf(&b, "last console lines:\n%s", indentLines(e.Console))
	} else {
		fmt.Fprintf(&b, "the guest printed nothing on its console")
	}
	return b.String()
}

func (e *GuestError) Unwrap() error { return e.Err }

func indentLines(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
