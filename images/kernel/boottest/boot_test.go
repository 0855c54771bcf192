// Package boottest boots the ftvm guest image (patched kernel and Go
// /init) on the real VMM, in the nested KVM host when this machine has no
// usable KVM, and checks what the kernel patches promise: with the TSC
// hidden in CPUID, user-mode RDTSC is answered from the clocksource.
package boottest

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images/kernel"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

func TestMain(m *testing.M) { os.Exit(testimage.Main(m)) }

type console struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// boot runs the image with append on its command line until the guest
// powers off, and returns the console output with \n line ends.
func boot(t *testing.T, append string) string {
	t.Helper()
	con := &console{}
	inst, err := instance.New(context.Background(), instance.Config{
		Image: testimage.Dir(t), Append: append, MemoryMiB: 256, Console: con,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	reason, err := inst.Run(ctx)
	if err != nil || reason != vm.StoppedPowerOff {
		t.Fatalf("guest stopped with %v, %v (want a power-off); console:\n%s", reason, err, con.String())
	}
	t.Logf("guest with %q ran and powered off in %v", append, time.Since(start).Round(time.Millisecond))
	return strings.ReplaceAll(con.String(), "\r\n", "\n") // the serial console's line ends
}

// line returns the first console line matching re, failing the test if none does.
func line(t *testing.T, out string, re string) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)` + re).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("console has no line matching %s:\n%s", re, out)
	}
	return m
}

// TestUserRDTSCEmulated boots the guest with the tsc workload: the kernel
// announces the emulation, the clocksource is the PM timer (so the vDSO
// has no TSC mode and clock_gettime falls back to the syscall), /init's
// own RDTSC (its boot line) and the workload's checks on several threads,
// under prctl(PR_SET_TSC) and across context switches all see the
// emulated clock, and Go programs (the runtime executes RDTSC at start)
// run to a clean power-off.
func TestUserRDTSCEmulated(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	out := boot(t, "ftvm.workload=tsc ftvm.disk=none")
	t.Logf("kernel: %s", line(t, out, `^.*`+regexp.QuoteMeta(kernel.NoTSCBootLine)+`.*$`)[0])
	ready := line(t, out, `^ftvm-guest ready clocksource=(\S+) kernel=\S+$`)
	if ready[1] != "acpi_pm" {
		t.Errorf("clocksource %s, want acpi_pm", ready[1])
	}
	tsc := line(t, out, `^ftvm-guest tsc rdtsc=(\S+) value=(\d+) monotonic_ns=(\d+)\.\.(\d+) samples=\d+$`)
	t.Logf("/init: %s", tsc[0])
	if tsc[1] != "emulated" {
		t.Errorf("/init's RDTSC is %s, want emulated", tsc[1])
	}
	// Nanoseconds since boot: a guest that booted within the test's few
	// minutes, against the 10^12 and more of a host TSC running for hours.
	if v, _ := strconv.ParseUint(tsc[2], 10, 64); v == 0 || v > uint64(10*time.Minute) {
		t.Errorf("emulated RDTSC value %d is not nanoseconds since a recent boot", v)
	}
	for _, want := range []string{
		"ftvm-guest tsc thread=3 rdtsc=emulated",
		"ftvm-guest tsc prctl=PR_TSC_SIGSEGV get_tsc=2 rdtsc_faulted=true",
		"ftvm-guest tsc other-thread-while-sigsegv-mode rdtsc=emulated",
		"ftvm-guest tsc after-PR_TSC_ENABLE rdtsc=emulated",
		"ftvm-guest tsc checks passed",
		"ftvm-guest exit status=0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", out)
	}
}

// TestUserRDTSCP boots the guest with the rdtscp workload. CPUID hides
// RDTSCP too, so depending on the hypervisor the instruction raises #UD
// (the workload dies of SIGILL, as on a CPU without RDTSCP) or #GP (the
// kernel emulates it, with ECX 0). Either is deterministic; the host's
// counter is not.
func TestUserRDTSCP(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	out := boot(t, "ftvm.workload=rdtscp ftvm.disk=none")
	line(t, out, `^ftvm-guest rdtscp executing$`)
	if m := regexp.MustCompile(`(?m)^ftvm-guest rdtscp=(\S+) value=(\d+) aux=(\d+) .*$`).FindStringSubmatch(out); m != nil {
		t.Logf("RDTSCP was emulated: %s", m[0])
		if m[1] != "emulated" || m[3] != "0" || !strings.Contains(out, "ftvm-guest exit status=0") {
			t.Fatalf("RDTSCP returned the %s counter (aux %s); console:\n%s", m[1], m[3], out)
		}
		return
	}
	if !strings.Contains(out, "SIGILL") {
		t.Fatalf("RDTSCP neither returned nor raised SIGILL; console:\n%s", out)
	}
	t.Logf("RDTSCP raised #UD: %s", line(t, out, `^.*SIGILL.*$`)[0])
}
