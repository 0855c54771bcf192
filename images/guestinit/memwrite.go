package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"
)

// memwriteWorkload dirties guest memory: it allocates ftvm.mib MiB
// (default 64) and writes one byte in every page of it, over and over, for
// cfg.Seconds (0: until stopped), printing each second how many pages it
// wrote. ftvm.rate=N paces it to about N pages a second with CPU work
// between pages, calibrated once at the start (0, the default: as fast as
// it can). The pacing is work, not clock reads (each would be an exit to
// record), so a guest throttled to a share of its vCPU's time writes about
// that share of N: the case auto-converge is for (re-protection's
// pre-copy), where the guest dirties memory faster than the channel sends
// it until it is slowed. Each line also gives the longest the guest went
// between two of its clock reads in that second (stall_ms): normally the
// time of a few pages' work, more when something outside stopped the
// guest (auto-converge, the stop for a transfer's last round). That is the
// guest's own view of its pauses, independent of what the VMM reports.
func memwriteWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	mib := 64
	if s, ok := cfg.Params["mib"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 4096 {
			return fmt.Errorf("ftvm.mib=%q: want a size in MiB, 1 to 4096", s)
		}
		mib = n
	}
	var gap time.Duration
	if s, ok := cfg.Params["rate"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return fmt.Errorf("ftvm.rate=%q: want pages per second, 0 for as fast as possible", s)
		}
		if n > 0 {
			gap = time.Second / time.Duration(n)
		}
	}
	// Calibrate: how many rounds of work fill one gap.
	var x uint64 = 1
	work := func(n int) {
		for range n {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	spins := 0
	if gap > 0 {
		const probe = 1 << 20
		t := time.Now()
		work(probe)
		spins = int(float64(probe) * float64(gap) / float64(max(time.Since(t), time.Microsecond)))
	}
	buf := make([]byte, mib<<20)
	const page = 4096
	start := time.Now()
	next := time.Second
	var pages, pass uint64
	last, stall := time.Duration(0), time.Duration(0)
	fmt.Fprintf(out, "ftvm-guest memwrite mib=%d gap=%v spins=%d started\n", mib, gap, spins)
	for cfg.Seconds == 0 || time.Since(start) < time.Duration(cfg.Seconds)*time.Second {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		pass++
		for off := 0; off < len(buf); off += page {
			buf[off] = byte(pass)
			pages++
			work(spins)
			// The clock is read every 16 pages (a read is an exit: a few
			// hundred a second at the usual pace), and a line names the
			// second it is printed in: a slowed guest shows as a gap
			// between seconds, not as a late label.
			if pages%16 == 0 {
				e := time.Since(start)
				stall = max(stall, e-last)
				last = e
				if e >= next {
					fmt.Fprintf(out, "ftvm-guest memwrite second=%d pages=%d stall_ms=%d\n", int(e/time.Second), pages, stall.Milliseconds())
					next = e.Truncate(time.Second) + time.Second
					stall = 0
				}
			}
		}
	}
	fmt.Fprintf(out, "ftvm-guest memwrite done pages=%d work=%x\n", pages, x&0xff)
	return nil
}
