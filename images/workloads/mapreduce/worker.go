package mapreduce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/rpc"
	"os"
	"path/filepath"
	"time"
)

// Fault is what a worker's fault hook makes it do with a task.
type Fault int

const (
	FaultNone Fault = iota
	// FaultCrash: the worker dies at once; its file server goes with it,
	// so its completed map outputs are lost too.
	FaultCrash
	// FaultCrashAfterWrite: the worker writes the task's output, then dies
	// before reporting it.
	FaultCrashAfterWrite
	// FaultHang: the worker stops making progress (until its context
	// ends) but its file server keeps serving.
	FaultHang
	// FaultSlow: the worker does the task after a delay (Worker.SlowBy).
	FaultSlow
)

// ErrCrashed is what Run returns after a FaultCrash.
var ErrCrashed = errors.New("worker crashed (injected fault)")

// WorkerConfig describes one worker.
type WorkerConfig struct {
	Name        string
	Coordinator string // host:port of the coordinator
	// Dir is the worker's local disk: intermediate files are written and
	// served from here.
	Dir string
	// Listen is the address of the intermediate-file server (":0" for
	// any port); Advertise, if set, is the address reducers should use.
	Listen    string
	Advertise string
	// Fault, if set, is asked at the start of every task.
	Fault  func(kind TaskKind, task int) Fault
	SlowBy time.Duration
	// PollInterval is how long an idle worker waits before asking for a
	// task again (default 50 ms). Every ask is a new connection: a worker
	// in a guest, where that is costly, asks less often.
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Worker runs tasks for a coordinator.
type Worker struct {
	cfg  WorkerConfig
	addr string
	log  *slog.Logger
}

// rpcTimeout bounds one call to the coordinator for a task, and a task's
// fetches and report when the task does not say longer (reportTimeout).
const rpcTimeout = 5 * time.Second

// reportTimeout bounds task t's fetches and the report of its result: as
// long as the coordinator waits for the task, at least rpcTimeout. A
// worker in a slow guest (an ftvm pair in the nested test host) took over
// 5 s for a report the coordinator would still have taken.
func reportTimeout(t Task) time.Duration { return max(rpcTimeout, t.Timeout) }

// RunWorker runs a worker until the job is done (nil), ctx ends (nil),
// the coordinator stays unreachable (error), or an injected crash
// (ErrCrashed).
func RunWorker(ctx context.Context, cfg WorkerConfig) error {
	if cfg.Listen == "" {
		cfg.Listen = ":0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("worker %s: %w", cfg.Name, err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("worker %s: file server: %w", cfg.Name, err)
	}
	w := &Worker{cfg: cfg, addr: cfg.Advertise, log: cfg.Logger.With("worker", cfg.Name)}
	if w.addr == "" {
		w.addr = ln.Addr().String()
	}
	srv := &http.Server{Handler: http.HandlerFunc(w.serveFile), ReadHeaderTimeout: rpcTimeout}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	defer func() {
		srv.Close()
		<-served
	}()
	return w.loop(ctx)
}

// serveFile serves GET /mr-<m>-<r> from the worker's directory, and
// nothing else.
func (w *Worker) serveFile(rw http.ResponseWriter, r *http.Request) {
	var m, red int
	name := r.URL.Path[1:]
	if _, err := fmt.Sscanf(name, "mr-%d-%d", &m, &red); err != nil || name != intermediateName(m, red) {
		http.NotFound(rw, r)
		return
	}
	http.ServeFile(rw, r, filepath.Join(w.cfg.Dir, name))
}

func (w *Worker) loop(ctx context.Context) error {
	unreachableSince := time.Time{}
	for ctx.Err() == nil {
		var t Task
		if err := w.call(ctx, rpcTimeout, "Coordinator.RequestTask", &TaskRequest{Worker: w.cfg.Name, Addr: w.addr}, &t); err != nil {
			// A coordinator gone for long means the job is over (or lost);
			// either way this worker has nothing to do.
			if unreachableSince.IsZero() {
				unreachableSince = time.Now()
			} else if time.Since(unreachableSince) > 3*rpcTimeout {
				return fmt.Errorf("worker %s: coordinator unreachable: %w", w.cfg.Name, err)
			}
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		unreachableSince = time.Time{}
		var err error
		switch t.Kind {
		case TaskExit:
			return nil
		case TaskWait:
			sleep(ctx, w.cfg.PollInterval)
			continue
		case TaskMap, TaskReduce:
			err = w.run(ctx, t)
		default:
			err = fmt.Errorf("unknown task kind %v", t.Kind)
		}
		if errors.Is(err, ErrCrashed) {
			return err
		}
		if err != nil {
			// The task times out at the coordinator and runs elsewhere.
			w.log.Warn("task failed", "kind", t.Kind, "task", t.ID, "err", err)
		}
	}
	return nil
}

// run executes one task with the fault hook applied.
func (w *Worker) run(ctx context.Context, t Task) error {
	fault := FaultNone
	if w.cfg.Fault != nil {
		fault = w.cfg.Fault(t.Kind, t.ID)
	}
	switch fault {
	case FaultCrash:
		return ErrCrashed
	case FaultHang:
		<-ctx.Done()
		return nil
	case FaultSlow:
		if !sleep(ctx, w.cfg.SlowBy) {
			return nil
		}
	}
	app, err := AppByName(t.App)
	if err != nil {
		return err
	}
	if t.Kind == TaskMap {
		if err := w.doMap(app, t); err != nil {
			return err
		}
		if fault == FaultCrashAfterWrite {
			return ErrCrashed
		}
		return w.call(ctx, reportTimeout(t), "Coordinator.MapDone", &MapDone{ID: t.ID, Attempt: t.Attempt, Addr: w.addr}, &Empty{})
	}
	out, failed, err := w.doReduce(ctx, app, t)
	if err != nil {
		return err
	}
	if failed != nil {
		return w.call(ctx, reportTimeout(t), "Coordinator.FetchFailed", failed, &Empty{})
	}
	if fault == FaultCrashAfterWrite {
		return ErrCrashed
	}
	return w.call(ctx, reportTimeout(t), "Coordinator.ReduceDone", &ReduceDone{ID: t.ID, Attempt: t.Attempt, Output: out}, &Empty{})
}

// doMap runs Map on the split and writes one file per reduce task, each
// atomically, so a reducer never fetches a partial file.
func (w *Worker) doMap(app App, t Task) error {
	if t.NReduce < 1 {
		return fmt.Errorf("map task %d: %d reduce tasks", t.ID, t.NReduce)
	}
	buckets := make([][]KeyValue, t.NReduce)
	for _, kv := range app.Map(t.Input.Name, string(t.Input.Data)) {
		r := partition(kv.Key, t.NReduce)
		buckets[r] = append(buckets[r], kv)
	}
	for r, kvs := range buckets {
		if err := writeAtomic(filepath.Join(w.cfg.Dir, intermediateName(t.ID, r)), encodeIntermediate(kvs)); err != nil {
			return fmt.Errorf("map task %d: %w", t.ID, err)
		}
	}
	return nil
}

// doReduce fetches the task's partition from every map task's worker and
// reduces it. If a fetch fails it returns what to report instead.
func (w *Worker) doReduce(ctx context.Context, app App, t Task) ([]byte, *FetchFailed, error) {
	if len(t.Locations) != t.NMap {
		return nil, nil, fmt.Errorf("reduce task %d: %d locations for %d map tasks", t.ID, len(t.Locations), t.NMap)
	}
	var kvs []KeyValue
	for m, addr := range t.Locations {
		part, err := fetch(ctx, reportTimeout(t), addr, intermediateName(m, t.ID))
		if err != nil {
			w.log.Info("fetch failed", "map", m, "addr", addr, "err", err)
			return nil, &FetchFailed{Reduce: t.ID, Attempt: t.Attempt, Map: m, Addr: addr}, nil
		}
		kvs = append(kvs, part...)
	}
	out := reduceAll(app, kvs, nil)
	// The worker's own copy, as the paper's reducer writes its output
	// file; the coordinator keeps the job's copy.
	if err := writeAtomic(filepath.Join(w.cfg.Dir, OutputName(t.ID)), out); err != nil {
		return nil, nil, fmt.Errorf("reduce task %d: %w", t.ID, err)
	}
	return out, nil, nil
}

func fetch(ctx context.Context, timeout time.Duration, addr, name string) ([]KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/"+name, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("fetch %s from %s: %s", name, addr, resp.Status)
	}
	kvs, err := decodeIntermediate(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("fetch %s from %s: %w", name, addr, err)
	}
	return kvs, nil
}

// call makes one RPC to the coordinator on a fresh connection with a
// deadline timeout away (net/rpc has no per-call timeout of its own).
func (w *Worker) call(ctx context.Context, timeout time.Duration, method string, args, reply any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", w.cfg.Coordinator)
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	client := rpc.NewClient(conn)
	defer client.Close()
	if err := client.Call(method, args, reply); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return nil
}

// sleep waits d; false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
