package mapreduce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/rpc"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// TaskKind says what a worker is asked to do.
type TaskKind int

const (
	TaskMap TaskKind = iota
	TaskReduce
	// TaskWait: nothing to hand out now (tasks are running); ask again.
	TaskWait
	// TaskExit: the job is done.
	TaskExit
)

func (k TaskKind) String() string {
	switch k {
	case TaskMap:
		return "map"
	case TaskReduce:
		return "reduce"
	case TaskWait:
		return "wait"
	case TaskExit:
		return "exit"
	}
	return fmt.Sprintf("TaskKind(%d)", int(k))
}

// The coordinator's RPCs (net/rpc over TCP, service "Coordinator").

type TaskRequest struct {
	Worker string // a name for logs
	Addr   string // host:port of the worker's intermediate-file server
}

type Task struct {
	Kind    TaskKind
	ID      int
	Attempt int // unique per assignment
	App     string
	NMap    int
	NReduce int
	// Map: the split to process (the coordinator ships it, so workers
	// need no shared file system).
	Input Split
	// Reduce: where map task m's output lives (a worker's file server).
	Locations []string
	// Timeout is the coordinator's TaskTimeout: how long it waits for
	// this task before giving it to another worker. The worker waits as
	// long for its fetches and its report (reportTimeout): giving up
	// sooner throws finished work away while the coordinator still waits.
	Timeout time.Duration
}

type MapDone struct {
	ID, Attempt int
	Addr        string
}

type ReduceDone struct {
	ID, Attempt int
	Output      []byte
}

// FetchFailed reports that a reducer could not read map task Map's
// output from Addr: the machine is presumed gone and the map task must
// run again (Section 3.3: completed map tasks of a failed worker are
// re-executed, their output being on its local disk).
type FetchFailed struct {
	Reduce, Attempt int
	Map             int
	Addr            string
}

type Empty struct{}

// CoordinatorConfig describes one job.
type CoordinatorConfig struct {
	App       string
	Inputs    []Split
	NReduce   int
	OutputDir string
	// TaskTimeout: a task not reported done within it is given to another
	// worker (the paper's master pings workers; a deadline per task
	// detects both a dead and a hung worker).
	TaskTimeout time.Duration
	// Workers, if above 1, holds every task back until that many workers
	// (told apart by TaskRequest.Worker) have asked for one, so a job
	// whose workers start at different times (guests booting) still
	// spreads over all of them instead of the first one doing it all.
	Workers int
	Logger  *slog.Logger
}

type taskStatus int

const (
	idle taskStatus = iota
	running
	done
)

type taskState struct {
	status   taskStatus
	attempt  int
	started  time.Time
	location string // map: file server of the worker whose output counts
}

// Stats counts what the coordinator did, for tests and demos.
type Stats struct {
	Assigned    int // task assignments, first and repeated
	TimedOut    int // assignments given up after TaskTimeout
	Reexecuted  int // completed map tasks run again after a failed fetch
	LateReports int // completions of tasks already done (a slow worker)
}

// Coordinator hands out tasks and collects results (the paper's master).
type Coordinator struct {
	cfg CoordinatorConfig
	log *slog.Logger

	mu       sync.Mutex
	seen     map[string]bool // workers that asked, until cfg.Workers did
	maps     []taskState
	reduces  []taskState
	attempts int
	stats    Stats
	finished chan struct{} // closed when every output exists
}

// NewCoordinator checks cfg and prepares the job.
func NewCoordinator(cfg CoordinatorConfig) (*Coordinator, error) {
	if _, err := AppByName(cfg.App); err != nil {
		return nil, err
	}
	if len(cfg.Inputs) == 0 || cfg.NReduce < 1 {
		return nil, fmt.Errorf("mapreduce job: %d inputs, %d reduce tasks", len(cfg.Inputs), cfg.NReduce)
	}
	if err := os.MkdirAll(cfg.OutputDir, 0o755); err != nil {
		return nil, fmt.Errorf("mapreduce job: %w", err)
	}
	if cfg.TaskTimeout == 0 {
		cfg.TaskTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Coordinator{
		cfg:      cfg,
		log:      cfg.Logger,
		maps:     make([]taskState, len(cfg.Inputs)),
		reduces:  make([]taskState, cfg.NReduce),
		finished: make(chan struct{}),
	}
	if cfg.Workers > 1 {
		c.seen = map[string]bool{}
	}
	return c, nil
}

// Serve answers workers on ln until ctx ends.
func (c *Coordinator) Serve(ctx context.Context, ln net.Listener) error {
	srv := rpc.NewServer()
	if err := srv.RegisterName("Coordinator", &coordinatorRPC{c}); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for conn := range conns {
			conn.Close()
		}
		conns = nil
	})
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("coordinator: accept: %w", err)
		}
		mu.Lock()
		if conns == nil {
			mu.Unlock()
			conn.Close()
			continue
		}
		conns[conn] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			srv.ServeConn(conn)
			mu.Lock()
			delete(conns, conn)
			mu.Unlock()
		})
	}
}

// Done reports whether every reduce output exists in the output
// directory.
func (c *Coordinator) Done() bool {
	for r := range c.cfg.NReduce {
		if _, err := os.Stat(filepath.Join(c.cfg.OutputDir, OutputName(r))); err != nil {
			return false
		}
	}
	return true
}

// Wait returns when the job is done or ctx ends.
func (c *Coordinator) Wait(ctx context.Context) error {
	select {
	case <-c.finished:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mapreduce job: %w", ctx.Err())
	}
}

// Stats returns the counters.
func (c *Coordinator) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// MapsDone reports whether every map task is done (for tests that stage
// faults between the phases).
func (c *Coordinator) MapsDone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return allDone(c.maps)
}

func allDone(ts []taskState) bool {
	for _, t := range ts {
		if t.status != done {
			return false
		}
	}
	return true
}

// expire returns timed-out tasks to idle.
func (c *Coordinator) expire(ts []taskState, kind TaskKind, now time.Time) {
	for i := range ts {
		if ts[i].status == running && now.Sub(ts[i].started) > c.cfg.TaskTimeout {
			c.log.Info("task timed out", "kind", kind, "task", i, "attempt", ts[i].attempt)
			ts[i].status = idle
			c.stats.TimedOut++
		}
	}
}

// assign picks an idle task of ts, if any.
func (c *Coordinator) assign(ts []taskState, now time.Time) (int, bool) {
	for i := range ts {
		if ts[i].status == idle {
			c.attempts++
			ts[i] = taskState{status: running, attempt: c.attempts, started: now}
			c.stats.Assigned++
			return i, true
		}
	}
	return 0, false
}

func (c *Coordinator) requestTask(req *TaskRequest) Task {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	c.expire(c.maps, TaskMap, now)
	c.expire(c.reduces, TaskReduce, now)
	t := Task{App: c.cfg.App, NMap: len(c.maps), NReduce: len(c.reduces), Timeout: c.cfg.TaskTimeout}
	if c.seen != nil {
		c.seen[req.Worker] = true
		if len(c.seen) < c.cfg.Workers {
			t.Kind = TaskWait
			return t
		}
		c.log.Info("workers arrived; starting", "workers", len(c.seen))
		c.seen = nil // the job has started: no more waiting
	}
	if i, ok := c.assign(c.maps, now); ok {
		t.Kind, t.ID, t.Attempt, t.Input = TaskMap, i, c.maps[i].attempt, c.cfg.Inputs[i]
	} else if !allDone(c.maps) {
		t.Kind = TaskWait // reducers need every map's output
	} else if i, ok := c.assign(c.reduces, now); ok {
		t.Kind, t.ID, t.Attempt = TaskReduce, i, c.reduces[i].attempt
		for _, m := range c.maps {
			t.Locations = append(t.Locations, m.location)
		}
	} else if allDone(c.reduces) {
		t.Kind = TaskExit
	} else {
		t.Kind = TaskWait
	}
	if t.Kind == TaskMap || t.Kind == TaskReduce {
		c.log.Debug("assigned", "kind", t.Kind, "task", t.ID, "attempt", t.Attempt, "worker", req.Worker)
	}
	return t
}

func (c *Coordinator) mapDone(d *MapDone) error {
	if d.ID < 0 || d.ID >= len(c.maps) || d.Addr == "" {
		return fmt.Errorf("map done: task %d of %d from %q", d.ID, len(c.maps), d.Addr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.maps[d.ID].status == done {
		c.stats.LateReports++
		return nil
	}
	// The first completion counts, whichever attempt it is (Section 3.3:
	// the master ignores a second completion of a map task).
	c.maps[d.ID] = taskState{status: done, attempt: d.Attempt, location: d.Addr}
	return nil
}

func (c *Coordinator) reduceDone(d *ReduceDone) error {
	if d.ID < 0 || d.ID >= len(c.reduces) {
		return fmt.Errorf("reduce done: task %d of %d", d.ID, len(c.reduces))
	}
	c.mu.Lock()
	if c.reduces[d.ID].status == done {
		c.stats.LateReports++
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	// Written outside the lock: it may be large. Two attempts writing at
	// once is harmless: each renames a complete file of the same
	// contents (reduce is deterministic).
	if err := writeAtomic(filepath.Join(c.cfg.OutputDir, OutputName(d.ID)), d.Output); err != nil {
		c.log.Error("writing reduce output", "task", d.ID, "err", err)
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reduces[d.ID].status != done {
		c.reduces[d.ID] = taskState{status: done, attempt: d.Attempt}
		if allDone(c.reduces) && c.Done() {
			close(c.finished)
		}
	}
	return nil
}

func (c *Coordinator) fetchFailed(f *FetchFailed) error {
	if f.Map < 0 || f.Map >= len(c.maps) || f.Reduce < 0 || f.Reduce >= len(c.reduces) {
		return fmt.Errorf("fetch failed: map %d, reduce %d", f.Map, f.Reduce)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m := &c.maps[f.Map]; m.status == done && m.location == f.Addr {
		c.log.Info("map output lost; re-executing", "task", f.Map, "addr", f.Addr)
		*m = taskState{}
		c.stats.Reexecuted++
	}
	if r := &c.reduces[f.Reduce]; r.status == running && r.attempt == f.Attempt {
		*r = taskState{}
	}
	return nil
}

// coordinatorRPC is the net/rpc face of a Coordinator: only RPC methods,
// as net/rpc requires.
type coordinatorRPC struct{ c *Coordinator }

func (r *coordinatorRPC) RequestTask(req *TaskRequest, t *Task) error {
	*t = r.c.requestTask(req)
	return nil
}

func (r *coordinatorRPC) MapDone(d *MapDone, _ *Empty) error { return r.c.mapDone(d) }

func (r *coordinatorRPC) ReduceDone(d *ReduceDone, _ *Empty) error { return r.c.reduceDone(d) }

func (r *coordinatorRPC) FetchFailed(f *FetchFailed, _ *Empty) error { return r.c.fetchFailed(f) }
