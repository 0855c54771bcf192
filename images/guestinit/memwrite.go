package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"
)

// memwriteWorkload dirties guest memory as fast as it can: it allocates
// ftvm.mib MiB (default 64) and writes one word in every page of it, over
// and over, for cfg.Seconds (0: until stopped), printing each second how
// many pages it wrote. It is the worst case for copying a running guest
// (re-protection's pre-copy): every round finds the whole buffer written
// again, so only throttling the guest (auto-converge) lets the copy end.
func memwriteWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	mib := 64
	if s, ok := cfg.Params["mib"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 4096 {
			return fmt.Errorf("ftvm.mib=%q: want a size in MiB, 1 to 4096", s)
		}
		mib = n
	}
	buf := make([]byte, mib<<20)
	const page = 4096
	start := time.Now()
	next := time.Second
	var pages, pass uint64
	fmt.Fprintf(out, "ftvm-guest memwrite mib=%d started\n", mib)
	for cfg.Seconds == 0 || time.Since(start) < time.Duration(cfg.Seconds)*time.Second {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		pass++
		for off := 0; off < len(buf); off += page {
			buf[off] = byte(pass)
			pages++
			if pages%1024 == 0 {
				if e := time.Since(start); e >= next {
					fmt.Fprintf(out, "ftvm-guest memwrite second=%d pages=%d\n", int(next/time.Second), pages)
					next += time.Second
				}
			}
		}
	}
	return nil
}
