package mapreduce

import "testing"

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
