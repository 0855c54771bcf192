package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/mapreduce"
	"github.com/ftvm/ftvm/testbench/guesttest"
)

// runJob runs a coordinator (with cmdline's job) and two workers as the
// guest workloads, and returns the output the coordinator printed.
func runJob(t *testing.T, job, dataDir string) []string {
	t.Helper()
	coord := guesttest.FreeAddr(t)
	_, port, _ := net.SplitHostPort(coord)
	c := runInProcess(t, mrCoordinatorWorkload, "ftvm.workload=mapreduce-coordinator ftvm.workers=2 ftvm.port="+port+" "+job, dataDir)
	c.console.WaitFor(t, "ftvm-guest mapreduce-coordinator listening", c.stopped, 10*time.Second)
	var workers []*inProcess
	for range 2 {
		_, wport, _ := net.SplitHostPort(guesttest.FreeAddr(t))
		workers = append(workers, runInProcess(t, mrWorkerWorkload,
			fmt.Sprintf("ftvm.workload=mapreduce-worker ftvm.coordinator=%s ftvm.port=%s", coord, wport), t.TempDir()))
	}
	for i, w := range workers {
		if err := w.wait(t, 30*time.Second); err != nil {
			t.Fatalf("worker %d: %v; console:\n%s", i, err, w.console.String())
		}
		if !strings.Contains(w.console.String(), "ftvm-guest mapreduce-worker done") {
			t.Fatalf("worker %d ended without its done line; console:\n%s", i, w.console.String())
		}
	}
	c.console.WaitFor(t, "ftvm-guest mapreduce done", c.stopped, 10*time.Second)
	if err := c.stop(); err != nil {
		t.Fatalf("coordinator: %v", err)
	}
	var out []string
	for _, l := range strings.Split(c.console.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "ftvm-guest mapreduce out "); ok {
			out = append(out, v)
		}
	}
	return out
}

func sequentialLines(app mapreduce.App, inputs []mapreduce.Split) []string {
	lines := strings.Split(strings.TrimSuffix(string(mapreduce.Sequential(app, inputs)), "\n"), "\n")
	slices.Sort(lines)
	return lines
}

// TestMapReduceWorkloadsOnInputFiles: the coordinator reads input/ in its
// data directory, as from its disk.
func TestMapReduceWorkloadsOnInputFiles(t *testing.T) {
	data := t.TempDir()
	if err := os.Mkdir(filepath.Join(data, mrInputDir), 0o755); err != nil {
		t.Fatal(err)
	}
	inputs := mapreduce.GenerateSplits(5, 11)
	for _, in := range inputs {
		if err := os.WriteFile(filepath.Join(data, mrInputDir, in.Name), in.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := runJob(t, "ftvm.app=wordcount ftvm.nreduce=3", data)
	if want := sequentialLines(mapreduce.WordCount(), inputs); !slices.Equal(got, want) {
		t.Fatalf("printed output:\n%q\nsequential run:\n%q", got, want)
	}
}

// TestMapReduceWorkloadsOnGeneratedInputs: the coordinator makes its
// inputs from the seed, without a data directory.
func TestMapReduceWorkloadsOnGeneratedInputs(t *testing.T) {
	got := runJob(t, "ftvm.app=index ftvm.nreduce=2 ftvm.seed=5 ftvm.splits=4", "")
	if want := sequentialLines(mapreduce.InvertedIndex(), mapreduce.GenerateSplits(4, 5)); !slices.Equal(got, want) {
		t.Fatalf("printed output:\n%q\nsequential run:\n%q", got, want)
	}
}

func TestMapReduceCoordinatorWithoutInputs(t *testing.T) {
	p := runInProcess(t, mrCoordinatorWorkload, "ftvm.workload=mapreduce-coordinator ftvm.port=0", t.TempDir())
	if err := p.wait(t, 10*time.Second); err == nil || !strings.Contains(err.Error(), "no ftvm.seed, and no input files") {
		t.Fatalf("without inputs: %v", err)
	}
}
