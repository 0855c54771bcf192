package mapreduce

import (
	"testing"
	"time"
)

// TestCoordinatorWaitsForWorkers: with Workers set, no task leaves before
// that many distinct workers asked; the one that completes the count gets
// a task at once.
func TestCoordinatorWaitsForWorkers(t *testing.T) {
	c, err := NewCoordinator(CoordinatorConfig{App: "wordcount", Inputs: GenerateSplits(3, 1), NReduce: 1, OutputDir: t.TempDir(), Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, step := range []struct {
		worker string
		want   TaskKind
	}{{"a", TaskWait}, {"a", TaskWait}, {"b", TaskMap}, {"a", TaskMap}, {"c", TaskMap}, {"b", TaskWait}} {
		if got := c.requestTask(&TaskRequest{Worker: step.worker}); got.Kind != step.want {
			t.Fatalf("request %d by %s: %v, want %v", i, step.worker, got.Kind, step.want)
		}
	}
}

// TestTasksCarryTheTaskTimeout: a task says how long the coordinator waits
// for it, and the worker waits that long for its fetches and report (at
// least rpcTimeout), not less: a report given up sooner loses the work.
func TestTasksCarryTheTaskTimeout(t *testing.T) {
	c, err := NewCoordinator(CoordinatorConfig{App: "wordcount", Inputs: GenerateSplits(2, 1), NReduce: 1, OutputDir: t.TempDir(), TaskTimeout: 40 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	task := c.requestTask(&TaskRequest{Worker: "a"})
	if task.Kind != TaskMap || task.Timeout != 40*time.Second {
		t.Fatalf("task %v with timeout %v, want a map task carrying 40s", task.Kind, task.Timeout)
	}
	if got := reportTimeout(task); got != 40*time.Second {
		t.Fatalf("report timeout %v, want the task's 40s", got)
	}
	if got := reportTimeout(Task{Timeout: time.Second}); got != rpcTimeout {
		t.Fatalf("report timeout %v for a 1s task, want at least rpcTimeout (%v)", got, rpcTimeout)
	}
}
