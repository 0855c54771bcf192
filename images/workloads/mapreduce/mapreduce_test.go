package mapreduce

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testTaskTimeout = 500 * time.Millisecond

type job struct {
	t      *testing.T
	c      *Coordinator
	addr   string
	outDir string
	ctx    context.Context
	wg     sync.WaitGroup
}

func startJob(t *testing.T, app string, inputs []Split, nReduce int) *job {
	t.Helper()
	outDir := t.TempDir()
	c, err := NewCoordinator(CoordinatorConfig{App: app, Inputs: inputs, NReduce: nReduce, OutputDir: outDir, TaskTimeout: testTaskTimeout})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &job{t: t, c: c, addr: ln.Addr().String(), outDir: outDir, ctx: ctx}
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		j.wg.Wait() // every worker ends with the context
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return j
}

// worker starts a worker; its result arrives on the returned channel.
func (j *job) worker(name string, fault func(TaskKind, int) Fault) <-chan error {
	res := make(chan error, 1)
	dir := filepath.Join(j.t.TempDir(), name)
	j.wg.Go(func() {
		res <- RunWorker(j.ctx, WorkerConfig{Name: name, Coordinator: j.addr, Dir: dir, Listen: "127.0.0.1:0",
			Fault: fault, SlowBy: 3 * testTaskTimeout})
	})
	return res
}

func (j *job) wait() {
	j.t.Helper()
	ctx, cancel := context.WithTimeout(j.ctx, 40*time.Second)
	defer cancel()
	if err := j.c.Wait(ctx); err != nil {
		j.t.Fatal(err)
	}
	if !j.c.Done() {
		j.t.Fatal("job finished but Done is false")
	}
}

// checkOutput compares the job's output with a sequential run, line by
// line after sorting (reduce outputs are split by partition).
func (j *job) checkOutput(app App, inputs []Split) {
	j.t.Helper()
	var got []string
	for r := range j.c.cfg.NReduce {
		b, err := os.ReadFile(filepath.Join(j.outDir, OutputName(r)))
		if err != nil {
			j.t.Fatal(err)
		}
		got = append(got, lines(b)...)
	}
	want := lines(Sequential(app, inputs))
	slices.Sort(got)
	slices.Sort(want)
	if len(want) < 20 {
		j.t.Fatalf("sequential output has only %d lines", len(want))
	}
	if !slices.Equal(got, want) {
		j.t.Fatalf("output differs from the sequential run: %d lines vs %d\nfirst got: %q\nfirst want: %q",
			len(got), len(want), first(got), first(want))
	}
}

func lines(b []byte) []string {
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func first(s []string) []string { return s[:min(5, len(s))] }

func TestWordCountMatchesSequential(t *testing.T) {
	inputs := GenerateSplits(8, 1)
	j := startJob(t, "wordcount", inputs, 5)
	var results []<-chan error
	for i := range 3 {
		results = append(results, j.worker(fmt.Sprintf("w%d", i), nil))
	}
	j.wait()
	j.checkOutput(WordCount(), inputs)
	for _, r := range results {
		if err := <-r; err != nil {
			t.Fatal(err)
		}
	}
	// Timeouts may happen on a loaded machine (fsyncs are slow), so only
	// what a fault-free run rules out is checked: lost map outputs.
	if s := j.c.Stats(); s.Assigned < 8+5 || s.Reexecuted != 0 {
		t.Fatalf("fault-free run: %+v", s)
	}
}

func TestInvertedIndexMatchesSequential(t *testing.T) {
	inputs := GenerateSplits(6, 2)
	j := startJob(t, "index", inputs, 3)
	for i := range 2 {
		j.worker(fmt.Sprintf("w%d", i), nil)
	}
	j.wait()
	j.checkOutput(InvertedIndex(), inputs)
}

// TestWorkerCrashes crashes workers at task starts and after writing a
// task's output (before reporting it); replacements keep joining. The
// first crashes are fixed, so every run has at least three.
func TestWorkerCrashes(t *testing.T) {
	inputs := GenerateSplits(10, 3)
	j := startJob(t, "wordcount", inputs, 4)
	var calls, crashes atomic.Int64
	fault := func(TaskKind, int) Fault {
		n := calls.Add(1)
		crash := n == 2 || n == 5 || n == 8 || (rand.IntN(6) == 0 && crashes.Load() < 8)
		if !crash {
			return FaultNone
		}
		crashes.Add(1)
		if n%2 == 0 {
			return FaultCrash
		}
		return FaultCrashAfterWrite
	}
	done := make(chan struct{})
	var pool sync.WaitGroup
	for slot := range 3 {
		pool.Go(func() {
			for gen := 0; ; gen++ {
				err := <-j.worker(fmt.Sprintf("w%d.%d", slot, gen), fault)
				if !errors.Is(err, ErrCrashed) {
					return
				}
				select {
				case <-done:
					return
				default:
				}
			}
		})
	}
	j.wait()
	close(done)
	pool.Wait()
	j.checkOutput(WordCount(), inputs)
	s := j.c.Stats()
	if crashes.Load() < 3 || s.TimedOut < 1 {
		t.Fatalf("%d crashes, stats %+v: the faults did not happen", crashes.Load(), s)
	}
	t.Logf("%d crashes, %+v", crashes.Load(), s)
}

// TestWorkerHangsAndSlow: one worker hangs on its first task, another is
// slower than the timeout on its first; both tasks run again elsewhere,
// and the slow worker's late report is ignored.
func TestWorkerHangsAndSlow(t *testing.T) {
	inputs := GenerateSplits(6, 4)
	j := startJob(t, "index", inputs, 3)
	firstOnly := func(f Fault) func(TaskKind, int) Fault {
		var n atomic.Int64
		return func(TaskKind, int) Fault {
			if n.Add(1) == 1 {
				return f
			}
			return FaultNone
		}
	}
	j.worker("hangs", firstOnly(FaultHang))
	slow := j.worker("slow", firstOnly(FaultSlow))
	// The healthy worker joins once the faulty two hold a task each.
	time.Sleep(100 * time.Millisecond)
	healthy := j.worker("healthy", nil)
	j.wait()
	for _, r := range []<-chan error{slow, healthy} {
		if err := <-r; err != nil {
			t.Fatal(err)
		}
	}
	j.checkOutput(InvertedIndex(), inputs)
	s := j.c.Stats()
	if s.TimedOut < 2 || s.LateReports < 1 {
		t.Fatalf("stats %+v: want the hung and the slow task timed out and a late report", s)
	}
	t.Logf("%+v", s)
}

// TestLostMapOutputReexecuted: one worker does every map task, then dies
// when it is handed a reduce task, taking its intermediate files with it;
// reducers cannot fetch them, and the map tasks run again (Section 3.3).
func TestLostMapOutputReexecuted(t *testing.T) {
	inputs := GenerateSplits(5, 5)
	j := startJob(t, "wordcount", inputs, 3)
	mapper := j.worker("mapper", func(k TaskKind, _ int) Fault {
		if k == TaskReduce {
			return FaultCrash
		}
		return FaultNone
	})
	deadline := time.Now().Add(20 * time.Second)
	for !j.c.MapsDone() {
		if time.Now().After(deadline) {
			t.Fatal("maps never done")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := <-mapper; !errors.Is(err, ErrCrashed) {
		t.Fatalf("mapper: %v", err)
	}
	j.worker("r1", nil)
	j.worker("r2", nil)
	j.wait()
	j.checkOutput(WordCount(), inputs)
	if s := j.c.Stats(); s.Reexecuted < len(inputs) {
		t.Fatalf("stats %+v: want all %d map tasks re-executed", s, len(inputs))
	}
}

func TestDoneNeedsEveryOutput(t *testing.T) {
	inputs := GenerateSplits(2, 6)
	j := startJob(t, "wordcount", inputs, 2)
	if j.c.Done() {
		t.Fatal("done before any task")
	}
	j.worker("w", nil)
	j.wait()
	os.Remove(filepath.Join(j.outDir, OutputName(1)))
	if j.c.Done() {
		t.Fatal("done with an output missing")
	}
}

func TestPartitionSpreadsKeys(t *testing.T) {
	seen := map[int]bool{}
	for _, w := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		r := partition(w, 4)
		if r < 0 || r >= 4 {
			t.Fatalf("partition %d", r)
		}
		seen[r] = true
	}
	if len(seen) < 2 {
		t.Fatal("all keys in one partition")
	}
}

func FuzzDecodeIntermediate(f *testing.F) {
	f.Add(encodeIntermediate([]KeyValue{{"a", "1"}, {"b c", "x\ny"}}))
	f.Add([]byte(`{"k":"a","v":"1","z":2}`))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		kvs, err := decodeIntermediate(bytes.NewReader(b))
		if err != nil {
			return
		}
		again, err := decodeIntermediate(bytes.NewReader(encodeIntermediate(kvs)))
		if err != nil || !slices.Equal(again, kvs) {
			t.Fatalf("re-encoding %v: %v %v", kvs, again, err)
		}
	})
}
