package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// What a user-mode RDTSC returned, as /init reports it.
const (
	// tscEmulated: each value lay between CLOCK_MONOTONIC (ns) read just
	// before and just after it, and the values never decreased. That is the
	// ftvm kernel's emulation (images/kernel/patches/0002-…): a CPU without
	// a TSC faults on RDTSC and the kernel answers with ktime_get_ns().
	tscEmulated = "emulated"
	// tscHardware: a value outside its window: the CPU's own counter, a
	// clock the VMM can neither trap nor log.
	tscHardware = "hardware"
	// tscUnavailable: no RDTSC on this architecture.
	tscUnavailable = "unavailable"
)

// tscSample is one RDTSC (or RDTSCP) between two CLOCK_MONOTONIC reads.
type tscSample struct {
	before, value, after uint64
}

func monotonicNS() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

func sampleTSC() tscSample {
	b := monotonicNS()
	v := rdtsc()
	return tscSample{before: b, value: v, after: monotonicNS()}
}

// sampleTSCs takes n samples with short sleeps between them, so that the
// thread is switched out and in again between samples.
func sampleTSCs(n int) []tscSample {
	s := make([]tscSample, n)
	for i := range s {
		if i > 0 {
			time.Sleep(time.Millisecond)
		}
		s[i] = sampleTSC()
	}
	return s
}

// classifyTSC says what produced the samples (see tscEmulated).
func classifyTSC(s []tscSample) string {
	if !haveRDTSC || len(s) == 0 {
		return tscUnavailable
	}
	for i, x := range s {
		if x.value < x.before || x.value > x.after || (i > 0 && x.value < s[i-1].value) {
			return tscHardware
		}
	}
	return tscEmulated
}

// tscLine is the line /init prints before its ready line:
//
//	ftvm-guest tsc rdtsc=emulated|hardware|unavailable value=<first> monotonic_ns=<before>..<after> samples=<n>
func tscLine(s []tscSample) string {
	verdict := classifyTSC(s)
	if verdict == tscUnavailable {
		return "ftvm-guest tsc rdtsc=" + verdict
	}
	return fmt.Sprintf("ftvm-guest tsc rdtsc=%s value=%d monotonic_ns=%d..%d samples=%d",
		verdict, s[0].value, s[0].before, s[0].after, len(s))
}

// rdtscFaults executes RDTSC and reports whether it faulted (SIGSEGV),
// turned into a recoverable panic by SetPanicOnFault.
func rdtscFaults() (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			faulted = true
		}
	}()
	rdtsc()
	return false
}

// onLockedThread runs f on a goroutine locked to its own OS thread and
// waits for it. The thread is not reused afterwards (no UnlockOSThread),
// so a per-thread prctl cannot leak to other goroutines.
func onLockedThread(f func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer close(done)
		f()
	}()
	<-done
}

// tscWorkload checks the kernel's RDTSC emulation from user space:
//
//  1. RDTSC on three threads, sleeping between samples so the threads are
//     switched in and out, is emulated every time;
//  2. a thread that asks prctl(PR_SET_TSC, PR_TSC_SIGSEGV) gets SIGSEGV for
//     RDTSC, as upstream promises;
//  3. while that thread still has TSC disabled, another thread, scheduled
//     right after it, is still emulated (the global CR4.TSD survives the
//     switch from a TIF_NOTSC task: upstream would have toggled it off);
//  4. after PR_TSC_ENABLE the first thread is emulated again.
//
// It prints one line per step and fails unless all four hold, so on a CPU
// with a TSC (a developer's machine) it fails at step 1.
func tscWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	var fails []string
	check := func(what string, s []tscSample) {
		v := classifyTSC(s)
		fmt.Fprintf(out, "ftvm-guest tsc %s rdtsc=%s first=%d last=%d\n", what, v, s[0].value, s[len(s)-1].value)
		if v != tscEmulated {
			fails = append(fails, fmt.Sprintf("%s: RDTSC is %s", what, v))
		}
	}
	results := make([][]tscSample, 3)
	for i := range results {
		onLockedThread(func() { results[i] = sampleTSCs(5) })
	}
	for i, s := range results {
		check(fmt.Sprintf("thread=%d", i+1), s)
	}

	var (
		setErr, enableErr error
		mode              int
		faulted           bool
		other, after      []tscSample
	)
	onLockedThread(func() {
		if setErr = unix.Prctl(unix.PR_SET_TSC, unix.PR_TSC_SIGSEGV, 0, 0, 0); setErr != nil {
			return
		}
		var m int32
		if err := unix.Prctl(unix.PR_GET_TSC, uintptr(unsafe.Pointer(&m)), 0, 0, 0); err == nil {
			mode = int(m)
		}
		faulted = rdtscFaults()
		// This thread blocks with TIF_NOTSC set; the other one runs next.
		onLockedThread(func() { other = sampleTSCs(3) })
		if enableErr = unix.Prctl(unix.PR_SET_TSC, unix.PR_TSC_ENABLE, 0, 0, 0); enableErr != nil {
			return
		}
		after = sampleTSCs(3)
	})
	if err := errors.Join(setErr, enableErr); err != nil {
		return fmt.Errorf("prctl PR_SET_TSC: %w", err)
	}
	fmt.Fprintf(out, "ftvm-guest tsc prctl=PR_TSC_SIGSEGV get_tsc=%d rdtsc_faulted=%v\n", mode, faulted)
	if mode != unix.PR_TSC_SIGSEGV || !faulted {
		fails = append(fails, "a thread with PR_TSC_SIGSEGV did not get SIGSEGV for RDTSC")
	}
	check("other-thread-while-sigsegv-mode", other)
	check("after-PR_TSC_ENABLE", after)
	if len(fails) > 0 {
		return fmt.Errorf("tsc checks failed: %v", fails)
	}
	fmt.Fprintln(out, "ftvm-guest tsc checks passed")
	return nil
}

// rdtscpWorkload executes RDTSCP once. Where the hypervisor makes it raise
// #UD (CPUID hides RDTSCP) the process dies of SIGILL, which is why this is
// a workload of its own; where it raises #GP the kernel emulates it like
// RDTSC, with ECX (TSC_AUX) 0.
func rdtscpWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	if !haveRDTSC {
		return errors.New("no RDTSCP on this architecture")
	}
	fmt.Fprintln(out, "ftvm-guest rdtscp executing")
	b := monotonicNS()
	v, aux := rdtscp()
	s := []tscSample{{before: b, value: v, after: monotonicNS()}}
	verdict := classifyTSC(s)
	fmt.Fprintf(out, "ftvm-guest rdtscp=%s value=%d aux=%d monotonic_ns=%d..%d\n", verdict, v, aux, s[0].before, s[0].after)
	if verdict != tscEmulated || aux != 0 {
		return fmt.Errorf("RDTSCP is %s (aux %d), want emulated with aux 0", verdict, aux)
	}
	return nil
}
