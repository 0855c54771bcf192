package main

import (
	"regexp"
	"strings"
	"testing"
)

func TestClassifyTSC(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    []tscSample
		want string
	}{
		{"inside windows", []tscSample{{10, 11, 12}, {20, 20, 25}, {30, 31, 31}}, tscEmulated},
		{"hardware counter far above", []tscSample{{10, 9_000_000_000_000, 12}}, tscHardware},
		{"below its window", []tscSample{{10, 9, 12}}, tscHardware},
		{"went backwards", []tscSample{{10, 20, 30}, {10, 15, 30}}, tscHardware},
		{"none", nil, tscUnavailable},
	} {
		if got := classifyTSC(tc.s); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	if got := tscLine([]tscSample{{100, 150, 200}, {300, 301, 302}}); got != "ftvm-guest tsc rdtsc=emulated value=150 monotonic_ns=100..200 samples=2" {
		t.Errorf("tscLine: %q", got)
	}
}

// honoursTSD skips the test where the kernel accepts PR_TSC_SIGSEGV but
// the CPU still lets RDTSC through, as in a PVM guest (this development
// VM), where the guest kernel's CR4.TSD never reaches the hardware.
func honoursTSD(t *testing.T) {
	t.Helper()
	if faulted, _ := sigsegvModeFaults(t); !faulted {
		t.Skip("RDTSC does not fault under PR_TSC_SIGSEGV on this machine: its CPU ignores the kernel's CR4.TSD (a PVM-style guest?)")
	}
}

// TestRDTSCFaultDetection checks, on this machine's real TSC, what the
// guest's tsc workload relies on: RDTSC from Go on a thread with
// PR_TSC_SIGSEGV is reported as a fault, and not otherwise.
func TestRDTSCFaultDetection(t *testing.T) {
	if !haveRDTSC {
		t.Skip("no RDTSC on this architecture")
	}
	if rdtscFaults() {
		t.Fatal("RDTSC faulted without PR_TSC_SIGSEGV")
	}
	honoursTSD(t)
	if faulted, afterEnable := sigsegvModeFaults(t); !faulted || afterEnable {
		t.Fatalf("faulted with PR_TSC_SIGSEGV: %v, after PR_TSC_ENABLE: %v", faulted, afterEnable)
	}
}

// TestTSCWorkloadOnHardware runs the tsc workload here, where RDTSC is the
// CPU's own counter: it must say so and fail, which is what makes its
// success in the guest mean something.
func TestTSCWorkloadOnHardware(t *testing.T) {
	if !haveRDTSC {
		t.Skip("no RDTSC on this architecture")
	}
	if v := classifyTSC(sampleTSCs(3)); v != tscHardware {
		t.Skipf("RDTSC here is %s, not the hardware counter", v)
	}
	res := runProbeChild(t, probeWorkload)
	t.Logf("output:\n%s", res.out)
	if !strings.Contains(res.out, "ftvm-guest tsc thread=1 rdtsc=hardware") {
		t.Fatal("the tsc workload did not see the hardware counter on thread 1")
	}
	if res.segv {
		// Step 2 puts a thread in PR_TSC_SIGSEGV mode; here the child's own
		// runtime read the TSC through the vDSO on that thread and died.
		// That is step 2 faulting, just not where the workload looks.
		if !strings.Contains(res.out, "ftvm-guest tsc thread=3") {
			t.Fatal("the child died before step 2")
		}
		t.Log("the child died of SIGSEGV in PR_TSC_SIGSEGV mode (this host's vDSO reads the TSC)")
		return
	}
	if !strings.Contains(res.out, "probe workload-error: tsc checks failed: [thread=1: RDTSC is hardware") {
		t.Fatal("tsc workload on hardware did not fail at step 1")
	}
	if faulted, _ := sigsegvModeFaults(t); !faulted {
		t.Log("not checking the PR_TSC_SIGSEGV step: this machine's CPU ignores the kernel's CR4.TSD")
		return
	}
	if !regexp.MustCompile(`(?m)^ftvm-guest tsc prctl=PR_TSC_SIGSEGV get_tsc=2 rdtsc_faulted=true$`).MatchString(res.out) {
		t.Fatal("PR_TSC_SIGSEGV did not make RDTSC fault")
	}
}
