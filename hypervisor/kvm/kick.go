//go:build linux && amd64

package kvm

import (
	"fmt"
	"os/signal"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KickSignal is the signal a Kicker sends to interrupt KVM_RUN.
//
// It is real-time signal 35 because every lower choice is taken:
//   - SIGURG is the Go scheduler's asynchronous-preemption signal and
//     SIGPROF its profiler's; the runtime sends both on its own schedule,
//     so a kick could not be told apart from them.
//   - SIGUSR1/SIGUSR2 belong to the application (debug dumps, reloads) and
//     are commonly passed to signal.Notify or signal.Ignore.
//   - 32 and 33 are glibc's internal cancellation/setxid signals, and without
//     cgo the Go runtime itself uses 33 for AllThreadsSyscall.
//   - 34 is glibc's SIGRTMIN, the first one any cgo library grabs.
//
// The Go runtime installs its handler for real-time signals at start-up and,
// unless the program asks for them with signal.Notify, does nothing with
// them, which is exactly what a kick needs: the only effect is that a
// blocking KVM_RUN on the target thread returns EINTR. The program must not
// ignore this signal (signal.Ignore), or the kernel discards it and a kick
// reaches a running guest only through immediate_exit at its next entry.
const KickSignal = unix.Signal(35)

// Kicker stops a vCPU that may be inside KVM_RUN, from any goroutine. It is
// the only part of a VCPU that is safe to use concurrently with Run.
//
// A kick sets kvm_run.immediate_exit and then sends KickSignal to the vCPU's
// thread. The signal ends a KVM_RUN already in progress; immediate_exit
// covers the window in which the thread is between exits, where the signal
// is consumed in user space and would otherwise be lost. Either way the
// vCPU's next (or current) Run returns ExitInterrupted.
//
// The vCPU goroutine must then clear immediate_exit (SetImmediateExit(false))
// before it looks for the work the kick announced, not after: a kick that
// arrives in between then sets it again and the following Run returns at
// once, instead of being wiped out by a late clear.
type Kicker struct {
	pid, tid int
	word     *uint32 // kvm_run bytes 0..3: request_interrupt_window, immediate_exit, padding
}

// NewKicker returns a Kicker for v bound to the calling OS thread. Call it
// on the goroutine that runs v, after runtime.LockOSThread, and keep the
// thread locked while the Kicker is in use: the signal goes to this thread,
// whichever goroutine happens to be on it.
func (v *VCPU) NewKicker() (*Kicker, error) {
	if signal.Ignored(KickSignal) {
		return nil, fmt.Errorf("vcpu %d: kick signal %d is ignored by this process, kicks could not interrupt KVM_RUN", v.id, int(KickSignal))
	}
	return &Kicker{pid: unix.Getpid(), tid: unix.Gettid(), word: v.runWord()}, nil
}

// Kick makes the vCPU's current or next Run return ExitInterrupted.
func (k *Kicker) Kick() error {
	atomic.OrUint32(k.word, immediateExitBit)
	if err := unix.Tgkill(k.pid, k.tid, KickSignal); err != nil {
		return fmt.Errorf("kick vcpu thread %d: tgkill: %w", k.tid, err)
	}
	return nil
}

// Bits of the first word of kvm_run, read as a little-endian uint32. The two
// input bytes share a word, and a Kicker writes immediate_exit from another
// thread, so both are updated with atomic read-modify-writes on the word
// rather than byte stores that could race.
const (
	requestIRQWindowBit = 1 << 0 // byte 0: request_interrupt_window
	immediateExitBit    = 1 << 8 // byte 1: immediate_exit
)

func (v *VCPU) runWord() *uint32 { return (*uint32)(unsafe.Pointer(&v.run[0])) }

func (v *VCPU) setRunBit(bit uint32, on bool) {
	if on {
		atomic.OrUint32(v.runWord(), bit)
	} else {
		atomic.AndUint32(v.runWord(), ^bit)
	}
}
