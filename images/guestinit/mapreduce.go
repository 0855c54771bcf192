package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/ftvm/ftvm/images/workloads/mapreduce"
)

const (
	workloadMRCoordinator = "mapreduce-coordinator"
	workloadMRWorker      = "mapreduce-worker"
)

// Folders of the MapReduce workloads in the data directory (or in the
// temporary directory of a guest without a disk).
const (
	mrInputDir  = "input"            // the coordinator's input files, unless generated
	mrOutputDir = "mapreduce-output" // the job's reduce outputs
	mrWorkerDir = "mapreduce-worker" // a worker's intermediate files
)

// mrPoll is how often an idle worker asks for a task: every ask is a new
// TCP connection, which costs a guest far more than a host process
// (in the nested host, asking every 50 ms slowed whole jobs down).
const mrPoll = 250 * time.Millisecond

// mrLinger is how long a coordinator keeps answering after the job is
// done: workers learn that the job is over by asking for a task, and a
// worker that finds the coordinator gone instead ends with an error.
// Idle workers ask every mrPoll; this leaves room for a slow guest.
const mrLinger = 3 * time.Second

// workDir is a folder of the workload on the data disk, or in the
// temporary directory when the guest has none.
func workDir(cfg Config, name string) string {
	if cfg.DataDir != "" {
		return filepath.Join(cfg.DataDir, name)
	}
	return filepath.Join(os.TempDir(), name)
}

// mrCoordinatorWorkload runs one MapReduce job's coordinator on ftvm.port
// until the job is done, then prints the job's output on the console,
//
//	ftvm-guest mapreduce out <key> <value>     (one per output line, sorted)
//	ftvm-guest mapreduce done app=<app> splits=<n> nreduce=<r> lines=<n> elapsed=<d> ...
//
// and ends after mrLinger. The inputs are made from ftvm.seed with
// mapreduce.GenerateSplits, or read from input/ on the data disk.
func mrCoordinatorWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	mc := cfg.MapReduce
	inputs, from, err := mrInputs(cfg)
	if err != nil {
		return err
	}
	outDir := workDir(cfg, mrOutputDir)
	// A previous job's outputs would be taken for this one's.
	if err := os.RemoveAll(outDir); err != nil {
		return fmt.Errorf("mapreduce-coordinator: clear old outputs: %w", err)
	}
	c, err := mapreduce.NewCoordinator(mapreduce.CoordinatorConfig{
		App: mc.App, Inputs: inputs, NReduce: mc.NReduce, OutputDir: outDir, TaskTimeout: mc.TaskTimeout,
		Workers: mc.Workers,
		// Debug: a line per assignment, which says who did what (a job
		// has tens of tasks, not thousands).
		Logger: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("mapreduce-coordinator: %w", err)
	}
	fmt.Fprintf(out, "ftvm-guest mapreduce-coordinator listening addr=%s app=%s splits=%d nreduce=%d workers=%d inputs=%s\n",
		ln.Addr(), mc.App, len(inputs), mc.NReduce, mc.Workers, from)
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	served := make(chan error, 1)
	go func() { served <- c.Serve(serveCtx, ln) }()

	start := time.Now()
	if err := c.Wait(ctx); err != nil {
		stopServing()
		return errors.Join(err, <-served)
	}
	elapsed := time.Since(start)
	lines, err := readOutputs(outDir, mc.NReduce)
	if err != nil {
		stopServing()
		return errors.Join(err, <-served)
	}
	for _, l := range lines {
		fmt.Fprintf(out, "ftvm-guest mapreduce out %s\n", l)
	}
	s := c.Stats()
	fmt.Fprintf(out, "ftvm-guest mapreduce done app=%s splits=%d nreduce=%d lines=%d elapsed=%s assigned=%d timed_out=%d reexecuted=%d\n",
		mc.App, len(inputs), mc.NReduce, len(lines), elapsed.Round(time.Millisecond), s.Assigned, s.TimedOut, s.Reexecuted)
	select {
	case <-time.After(mrLinger):
	case <-ctx.Done():
	}
	stopServing()
	return <-served
}

// mrInputs returns the job's input splits and says where they came from.
func mrInputs(cfg Config) ([]mapreduce.Split, string, error) {
	mc := cfg.MapReduce
	if mc.Generated {
		return mapreduce.GenerateSplits(mc.Splits, mc.Seed), fmt.Sprintf("generated:seed=%d", mc.Seed), nil
	}
	dir := workDir(cfg, mrInputDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", fmt.Errorf("mapreduce-coordinator: no ftvm.seed, and no input files: %w", err)
	}
	var paths []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			paths = append(paths, filepath.Join(dir, e.Name()))
		}
	}
	if len(paths) == 0 {
		return nil, "", fmt.Errorf("mapreduce-coordinator: no ftvm.seed, and %s holds no input files", dir)
	}
	splits, err := mapreduce.ReadSplits(paths)
	if err != nil {
		return nil, "", fmt.Errorf("mapreduce-coordinator: %w", err)
	}
	return splits, dir, nil
}

// readOutputs returns the lines of every reduce output, sorted.
func readOutputs(dir string, nReduce int) ([]string, error) {
	var lines []string
	for r := range nReduce {
		b, err := os.ReadFile(filepath.Join(dir, mapreduce.OutputName(r)))
		if err != nil {
			return nil, fmt.Errorf("mapreduce-coordinator: read output: %w", err)
		}
		for l := range bytes.Lines(b) {
			lines = append(lines, string(bytes.TrimSuffix(l, []byte("\n"))))
		}
	}
	slices.Sort(lines)
	return lines, nil
}

// mrWorkerWorkload runs a MapReduce worker until the coordinator says the
// job is done. Its intermediate files are served on ftvm.port to the
// other workers, at this guest's address.
func mrWorkerWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	if cfg.Port == 0 {
		// The advertised address must name the port before it is bound.
		return errors.New("mapreduce-worker: needs a fixed ftvm.port for its file server")
	}
	ip, err := guestAddr(cfg.Net)
	if err != nil {
		return fmt.Errorf("mapreduce-worker: %w", err)
	}
	advertise := netip.AddrPortFrom(ip, uint16(cfg.Port)).String()
	dir := workDir(cfg, mrWorkerDir)
	fmt.Fprintf(out, "ftvm-guest mapreduce-worker coordinator=%s advertise=%s dir=%s\n", cfg.MapReduce.Coordinator, advertise, dir)
	err = mapreduce.RunWorker(ctx, mapreduce.WorkerConfig{
		Name: advertise, Coordinator: cfg.MapReduce.Coordinator.String(), Dir: dir,
		Listen: ":" + strconv.Itoa(cfg.Port), Advertise: advertise, PollInterval: mrPoll,
		Logger: slog.New(slog.NewTextHandler(out, nil)),
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "ftvm-guest mapreduce-worker done")
	return nil
}

// guestAddr is the address other guests reach this one at: the static
// address, the one DHCP gave eth0, or loopback on a guest without a
// network (only a coordinator in the same guest could use it).
func guestAddr(nc NetConfig) (netip.Addr, error) {
	switch nc.Mode {
	case NetStatic:
		return nc.Addr.Addr(), nil
	case NetNone:
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
	}
	ifc, err := net.InterfaceByName("eth0")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("find eth0's address: %w", err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("find eth0's address: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, errors.New("eth0 has no IPv4 address")
}
