package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"time"

	"github.com/ftvm/ftvm/images/workloads/kv"
)

// Workload is one program the guest can run, selected by ftvm.workload.
// It runs in a child process of /init; returning nil means exit status 0.
type Workload func(ctx context.Context, cfg Config, out io.Writer) error

// registry lists the workloads built into /init. It is a function, not a
// package variable, so nothing can mutate it at run time.
func registry() map[string]Workload {
	return map[string]Workload{
		"none":  func(context.Context, Config, io.Writer) error { return nil },
		"sleep": sleepWorkload,
		"cpu":   cpuWorkload,
		// db commits fsync'd transactions with CPU work between (db.go).
		"db": dbWorkload,
		// memwrite dirties memory as fast as it can (memwrite.go).
		"memwrite": memwriteWorkload,
		"kv":       kvWorkload,
		// Distributed workloads: one guest per replica or role, talking
		// over the guest network (raftkv.go, mapreduce.go).
		workloadRaftKV:        raftkvWorkload,
		workloadMRCoordinator: mrCoordinatorWorkload,
		workloadMRWorker:      mrWorkerWorkload,
		// tsc and rdtscp check the kernel's RDTSC/RDTSCP emulation (tsc.go).
		"tsc":    tscWorkload,
		"rdtscp": rdtscpWorkload,
		// crash panics on purpose: it proves that a failing workload still
		// ends with an exit line and a power-off, not a kernel panic.
		"crash": func(context.Context, Config, io.Writer) error { panic("ftvm.workload=crash asked for a panic") },
	}
}

func workloadNames(m map[string]Workload) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// sleepWorkload exercises the guest clock: it sleeps in one-second steps
// for cfg.Seconds and prints how much time the guest saw pass, which under
// replay must be the same on primary and backup.
func sleepWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	start := time.Now()
	for i := 1; i <= cfg.Seconds; i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		fmt.Fprintf(out, "ftvm-guest sleep step=%d/%d elapsed=%s\n", i, cfg.Seconds, time.Since(start).Round(time.Millisecond))
	}
	if elapsed := time.Since(start); elapsed < time.Duration(cfg.Seconds)*time.Second {
		return errors.New("guest clock ran backwards or sleep returned early")
	}
	return nil
}

// cpuWorkload keeps the CPU busy for cfg.Seconds (hashing a buffer over and
// over, no I/O) and prints a line per second: the CPU-bound case of the
// replication benchmarks, where the guest exits only for timer ticks.
// With ftvm.rounds=N it does a fixed amount of work instead, N rounds
// whatever the time, and ends with a done line whose digest depends only
// on N: the measure of a pair's slowdown against the guest alone.
func cpuWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	rounds := 0
	if _, ok := cfg.Params["rounds"]; ok {
		n, err := positiveParam(cfg.Params, "rounds", 0, 1<<40)
		if err != nil {
			return err
		}
		rounds = n
	}
	buf := make([]byte, 64<<10)
	sum := sha256.Sum256(buf)
	start := time.Now()
	if rounds > 0 {
		// No clock reads between the progress lines: each would be an exit,
		// and this case is about a guest that computes without them.
		fmt.Fprintf(out, "ftvm-guest cpu start rounds=%d\n", rounds)
		step := max(rounds/10, 1)
		for done := 1; done <= rounds; done++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			copy(buf, sum[:])
			sum = sha256.Sum256(buf)
			if done%step == 0 && done != rounds {
				fmt.Fprintf(out, "ftvm-guest cpu rounds=%d/%d elapsed=%s\n", done, rounds, time.Since(start).Round(time.Millisecond))
			}
		}
		fmt.Fprintf(out, "ftvm-guest cpu done rounds=%d digest=%x elapsed=%s\n", rounds, sum[:8], time.Since(start).Round(time.Millisecond))
		return nil
	}
	next, done := time.Second, 0
	for time.Since(start) < time.Duration(cfg.Seconds)*time.Second {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		copy(buf, sum[:])
		sum = sha256.Sum256(buf)
		done++
		if e := time.Since(start); e >= next {
			fmt.Fprintf(out, "ftvm-guest cpu second=%d rounds=%d digest=%x\n", int(next/time.Second), done, sum[:4])
			next += time.Second
		}
	}
	return nil
}

// runWorkload runs the workload and turns its outcome, including a panic,
// into an exit status.
func runWorkload(ctx context.Context, cfg Config, w Workload, out io.Writer) (status int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(out, "ftvm-guest workload %s panicked: %v\n%s", cfg.Workload, r, debug.Stack())
			status = 3
		}
	}()
	if err := w(ctx, cfg, out); err != nil {
		fmt.Fprintf(out, "ftvm-guest workload %s failed: %v\n", cfg.Workload, err)
		return 1
	}
	return 0
}

// kvLogName is the key-value log's file in the data directory.
const kvLogName = "kv.log"

// kvWorkload serves the key-value store of package kv on cfg.Port, with
// its log in the data directory (the mounted disk), or in memory when the
// guest has no disk. It runs until the workload is signalled.
func kvWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	store := kv.OpenMemory()
	where := "memory"
	if cfg.DataDir != "" {
		var rec kv.Recovery
		var err error
		path := filepath.Join(cfg.DataDir, kvLogName)
		if store, rec, err = kv.Open(path); err != nil {
			return err
		}
		where = path
		if rec.TornBytes > 0 {
			fmt.Fprintf(out, "ftvm-guest kv truncated a torn last record: %d bytes (%s)\n", rec.TornBytes, rec.TornReason)
		}
	}
	defer store.Close()
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("kv: %w", err)
	}
	st := store.Stats()
	fmt.Fprintf(out, "ftvm-guest kv listening addr=%s store=%s records=%d keys=%d\n", ln.Addr(), where, st.Seq, st.Keys)
	return kv.NewServer(store).Serve(ctx, ln)
}
