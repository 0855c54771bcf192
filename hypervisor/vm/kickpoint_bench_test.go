package vm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

// BenchmarkKickPointHits measures what finding a kick point again would
// cost a backup that has no instruction counter (issue 13, point 1): it
// would run from the last exit with a hardware breakpoint on the kicked
// RIP and compare registers at every stop. The cost is the number of
// stops, so this counts them: a Linux guest runs a workload, is stopped
// at a random point (AtRunningExit's kick, as the watchdog's would), and
// then runs on with a breakpoint on that RIP, stepping past each stop,
// until 20 ms of wall time passed, the guest exited for another reason,
// or 100000 stops. Reported per workload: the median and 90th percentile
// of the stops, the share of kick points not reached again at all, and
// of those in user mode.
func BenchmarkKickPointHits(b *testing.B) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	for range b.N {
		for _, w := range []string{"cpu", "memwrite ftvm.mib=16 ftvm.rate=2000"} {
			name := strings.Fields(w)[0]
			samples := kickPointSamples(b, "ftvm.workload="+w+" ftvm.seconds=100000", 40)
			var hits []float64
			none, user, byExit := 0, 0, 0
			for _, s := range samples {
				hits = append(hits, float64(s.hits))
				if s.hits == 0 {
					none++
				}
				if s.user {
					user++
				}
				if s.endedBy != "" {
					byExit++
				}
			}
			slices.Sort(hits)
			n := float64(len(hits))
			b.ReportMetric(hits[len(hits)/2], name+"-stops-p50")
			b.ReportMetric(hits[len(hits)*9/10], name+"-stops-p90")
			b.ReportMetric(hits[len(hits)-1], name+"-stops-max")
			b.ReportMetric(float64(none)/n, name+"-share-not-again")
			b.ReportMetric(float64(user)/n, name+"-share-user")
			b.ReportMetric(float64(byExit)/n, name+"-share-ended-by-exit")
			b.Logf("%s: %d kick points, stops in the 20 ms after each: %v", name, len(samples), hits)
		}
	}
}

// kickPointSample is one kick point and what followed it.
type kickPointSample struct {
	rip     uint64
	user    bool
	hits    int
	endedBy string // the exit that ended the count, "" if time or the cap did
}

// kickPointSamples boots the test image with args, waits for its workload
// to run, and takes n kick points a quarter second apart.
func kickPointSamples(b *testing.B, args string, n int) []kickPointSample {
	dir := testimage.Dir(b)
	m, err := images.Inspect(dir)
	if err != nil {
		b.Fatal(err)
	}
	console := &syncBuffer{}
	v, err := New(Config{
		Kernel:    filepath.Join(dir, m.Kernel),
		Initrd:    filepath.Join(dir, m.Initrd),
		Cmdline:   strings.TrimSpace(m.Cmdline + " " + args),
		MemoryMiB: 256,
		Console:   console,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := v.Run(ctx); done <- err }()
	deadline := time.Now().Add(4 * time.Minute)
	for !strings.Contains(console.String(), "second=2 ") {
		if time.Now().After(deadline) {
			b.Fatalf("the workload did not report its second 2 in 4 minutes; console:\n%s", console.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	var out []kickPointSample
	for range n {
		time.Sleep(250 * time.Millisecond)
		var s kickPointSample
		err := v.AtRunningExit(ctx, func() (err error) {
			s, err = v.countKickPointHits(20*time.Millisecond, 100000)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, s)
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return out
}

// countKickPointHits runs the guest from where it stands with a hardware
// breakpoint on its RIP and counts the stops there (see
// BenchmarkKickPointHits). Port and MMIO exits on the way are handled as
// the loop would (without timers or interrupts: the count is short); any
// other exit ends the count and is left for the loop.
func (v *VM) countKickPointHits(d time.Duration, maxHits int) (kickPointSample, error) {
	var regs kvm.Regs
	var sregs kvm.Sregs
	if err := v.vcpu.GetRegs(&regs); err != nil {
		return kickPointSample{}, err
	}
	if err := v.vcpu.GetSregs(&sregs); err != nil {
		return kickPointSample{}, err
	}
	s := kickPointSample{rip: regs.RIP, user: sregs.CS.Selector&3 == 3}
	on := kvm.GuestDebug{Breakpoint: regs.RIP, BreakpointOn: true}
	step := kvm.GuestDebug{SingleStep: true}
	defer v.vcpu.SetDebug(kvm.GuestDebug{})
	l := v.loop
	// handled reports whether the loop can go on after exit e.
	handled := func(e *kvm.Exit) bool {
		switch e.Kind {
		case kvm.ExitIO:
			l.portIO(&e.IO)
		case kvm.ExitMMIO:
			l.mmio(&e.MMIO)
		case kvm.ExitInterrupted:
			l.vcpu.SetImmediateExit(false)
		default:
			s.endedBy = e.Kind.String()
			return false
		}
		return true
	}
	// The guest stands at the breakpoint: step past it first.
	next := step
	for end := time.Now().Add(d); time.Now().Before(end) && s.hits < maxHits; {
		if err := v.vcpu.SetDebug(next); err != nil {
			return s, err
		}
		e, err := v.vcpu.Run()
		if err != nil {
			return s, fmt.Errorf("KVM_RUN: %w", err)
		}
		switch {
		case e.Kind == kvm.ExitDebug && next.SingleStep:
			next = on
		case e.Kind == kvm.ExitDebug:
			s.hits++
			next = step
		case !handled(&e):
			return s, nil
		}
	}
	if s.endedBy == "" && l.powerOff {
		return s, errors.New("the guest powered off during the count")
	}
	return s, nil
}

// syncBuffer is a console safe to read while the VM writes it.
type syncBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (c *syncBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sb.Write(p)
}

func (c *syncBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sb.String()
}
