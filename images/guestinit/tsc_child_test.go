package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The probes below make RDTSC fault on purpose (PR_TSC_SIGSEGV). On a host
// whose kernel honours CR4.TSD and whose vDSO reads the TSC, the Go runtime
// itself executes RDTSC (runtime.nanotime) on the probing thread whenever it
// schedules, allocates or wakes a P there, and dies of SIGSEGV. So no probe
// runs in the test binary's own process: each runs in a fresh copy of it,
// and the test reads what the child printed and how it ended.

// childProbeEnv names the probe a child copy of the test binary runs
// instead of the tests.
const childProbeEnv = "FTVM_TSC_CHILD_PROBE"

func TestMain(m *testing.M) {
	if probe := os.Getenv(childProbeEnv); probe != "" {
		os.Exit(runChildProbe(probe))
	}
	os.Exit(m.Run())
}

// Child probe names and the lines they print.
const (
	probeSigsegvMode  = "sigsegv-mode" // prints "probe set" then "probe faulted=<bool> after_enable=<bool>"
	probeWorkload     = "workload"     // the tsc workload's lines, then "probe workload-error: <err>" or "probe workload-ok"
	probeNotSupported = "probe PR_SET_TSC not supported"
)

func runChildProbe(probe string) int {
	switch probe {
	case probeSigsegvMode:
		var setErr error
		var faulted, afterEnable bool
		onLockedThread(func() {
			if setErr = unix.Prctl(unix.PR_SET_TSC, unix.PR_TSC_SIGSEGV, 0, 0, 0); setErr != nil {
				return
			}
			faulted = rdtscFaults()
			setErr = unix.Prctl(unix.PR_SET_TSC, unix.PR_TSC_ENABLE, 0, 0, 0)
			afterEnable = rdtscFaults()
		})
		switch {
		case errors.Is(setErr, unix.EINVAL):
			fmt.Println(probeNotSupported)
		case setErr != nil:
			fmt.Printf("probe error: %v\n", setErr)
			return 1
		default:
			fmt.Printf("probe faulted=%v after_enable=%v\n", faulted, afterEnable)
		}
		return 0
	case probeWorkload:
		if err := tscWorkload(context.Background(), Config{}, os.Stdout); err != nil {
			fmt.Printf("probe workload-error: %v\n", err)
		} else {
			fmt.Println("probe workload-ok")
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown probe %q\n", probe)
	return 2
}

// childResult is what a probe child printed and how it ended.
type childResult struct {
	out string
	// segv: the child died of SIGSEGV (its own runtime executed RDTSC
	// inside the window where RDTSC faults).
	segv bool
}

// runProbeChild runs probe in a fresh copy of the test binary.
func runProbeChild(t *testing.T, probe string) childResult {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childProbeEnv+"="+probe)
	b, err := cmd.CombinedOutput()
	res := childResult{out: string(b)}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGSEGV {
			res.segv = true
			break
		}
		// The Go runtime turns a fatal SIGSEGV into exit status 2 with a
		// "SIGSEGV: segmentation violation" report.
		if strings.Contains(res.out, "SIGSEGV: segmentation violation") {
			res.segv = true
			break
		}
		t.Fatalf("probe %s: %v\n%s", probe, err, res.out)
	default:
		t.Fatalf("probe %s: %v", probe, err)
	}
	return res
}

// sigsegvModeFaults runs RDTSC (in a child) on a thread with
// PR_TSC_SIGSEGV, and again after PR_TSC_ENABLE, and says whether each
// faulted. A child killed by SIGSEGV inside that window counts as faulted:
// only RDTSC faults there.
func sigsegvModeFaults(t *testing.T) (faulted, afterEnable bool) {
	t.Helper()
	res := runProbeChild(t, probeSigsegvMode)
	if strings.Contains(res.out, probeNotSupported) {
		t.Skip("PR_SET_TSC not supported here")
	}
	if res.segv {
		t.Logf("the probe child's runtime hit the fault itself (this host's vDSO reads the TSC):\n%.400s", res.out)
		return true, false
	}
	if _, err := fmt.Sscanf(lineWith(res.out, "probe faulted="), "probe faulted=%t after_enable=%t", &faulted, &afterEnable); err != nil {
		t.Fatalf("probe output not understood (%v):\n%s", err, res.out)
	}
	return faulted, afterEnable
}

// lineWith returns the first line of out that starts with prefix.
func lineWith(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}
