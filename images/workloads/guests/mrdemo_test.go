package guests

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/mapreduce"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// The MapReduce demo's job: a word count over mrDemoSplits (times
// demoScale) generated splits and mrDemoReduce partitions; worker 0 dies
// once it was given mrDemoKillAfter tasks (so it holds a finished map's
// output and runs another), under a task timeout of mrDemoTaskTimeout.
const (
	mrDemoSeed, mrDemoSplits, mrDemoReduce = 20261208, 8, 2
	mrDemoKillAfter                        = 2
	// A pair's guest runs at about half speed in the nested host (its
	// backup replays on the same emulated CPU: BenchmarkSuite, speed
	// 0.2-0.5), and four VMs share that CPU here: with 30 s a map task of
	// the pair worker timed out in a CI-style run.
	mrDemoTaskTimeout = 90 * time.Second
)

// doneRE matches the coordinator's last line with the job's counters.
var doneRE = regexp.MustCompile(`ftvm-guest mapreduce done .* elapsed=(\S+) assigned=(\d+) timed_out=(\d+) reexecuted=(\d+)`)

// worker0Assigned matches the coordinator's line of a task given to
// worker 0 (192.168.127.21).
var worker0Assigned = regexp.MustCompile(`msg=assigned kind=\S+ task=\d+ attempt=\d+ worker=192\.168\.127\.21:7000`)

// mrJob is one job of the demo as the test saw it.
type mrJob struct {
	killed, done                   time.Time
	elapsed                        string // the coordinator's own figure
	assigned, timedOut, reexecuted int
	worker0Before                  int // tasks worker 0 was given before the kill
	failover                       string
}

// TestMapReduceDemo is the MapReduce demo of what ftvm buys a batch job.
// A word count over a coordinator guest and two worker guests, twice.
// First worker 0 runs as an ftvm pair, and its primary is SIGKILLed once
// the worker was given its second task: the backup goes live and
// finishes the task, so the job ends with every task assigned exactly
// once, none timed out, none re-executed. Then the same job with worker 0
// a plain VM whose plug is pulled at the same point: its task times out
// and runs again elsewhere, and the map outputs it held are lost and
// re-executed. Both outputs must equal a sequential run; the test logs
// both jobs side by side.
func TestMapReduceDemo(t *testing.T) {
	skipUnlessDemos(t)
	if kvmhost.RanElsewhere(t) {
		return
	}
	start := time.Now()
	splits := mrDemoSplits * demoScale()
	want := strings.Split(strings.TrimSuffix(string(mapreduce.Sequential(mapreduce.WordCount(), mapreduce.GenerateSplits(splits, mrDemoSeed))), "\n"), "\n")
	slices.Sort(want)
	ft := runMRDemoJob(t, true, splits, want)
	if ft.assigned != splits+mrDemoReduce || ft.timedOut != 0 || ft.reexecuted != 0 {
		t.Errorf("with ftvm: %d assignments for %d tasks, %d timed out, %d re-executed; want each task assigned once",
			ft.assigned, splits+mrDemoReduce, ft.timedOut, ft.reexecuted)
	}
	plain := runMRDemoJob(t, false, splits, want)
	if plain.timedOut == 0 && plain.reexecuted == 0 {
		t.Errorf("without ftvm no task timed out or ran again after worker 0 died: %+v", plain)
	}
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	var b strings.Builder
	row := func(what, a, c string) { fmt.Fprintf(&b, "| %-40s | %-30s | %-30s |\n", what, a, c) }
	row(fmt.Sprintf("worker 0 dies after %d tasks given to it", mrDemoKillAfter), "with ftvm: SIGKILL of its primary", "without ftvm: plug pulled")
	row("---", "---", "---")
	row("job done after the kill", ms(ft.done.Sub(ft.killed)), ms(plain.done.Sub(plain.killed)))
	row("extra job time after the kill", "-", ms(plain.done.Sub(plain.killed)-ft.done.Sub(ft.killed)))
	row("whole job (the coordinator's clock)", ft.elapsed, plain.elapsed)
	row("task assignments (tasks: "+strconv.Itoa(splits+mrDemoReduce)+")", strconv.Itoa(ft.assigned), strconv.Itoa(plain.assigned))
	row("timed out (task timeout "+mrDemoTaskTimeout.String()+")", strconv.Itoa(ft.timedOut), strconv.Itoa(plain.timedOut))
	row("map outputs lost, re-executed", strconv.Itoa(ft.reexecuted), strconv.Itoa(plain.reexecuted))
	row("output equals the sequential run", "yes", "yes")
	t.Logf("%s\nwith ftvm: %s\nwhole test %v", b.String(), ft.failover, time.Since(start).Round(time.Millisecond))
}

// runMRDemoJob runs the demo's job on a fresh switch with worker 0 an
// ftvm pair (protect) or a plain VM, kills worker 0 mid-job, and checks
// the output against want (a sequential run over the splits).
func runMRDemoJob(t *testing.T, protect bool, splits int, want []string) mrJob {
	t.Helper()
	const coordinator = "192.168.127.20:7000"
	sock := guesttest.StartSwitch(t, network.SwitchConfig{})
	c := guesttest.StartGuest(t, "coordinator", guestConfig(t, sock, 20, fmt.Sprintf(
		"ftvm.workload=mapreduce-coordinator ftvm.disk=none ftvm.app=wordcount ftvm.seed=%d ftvm.splits=%d ftvm.nreduce=%d ftvm.workers=2 ftvm.task-timeout-ms=%d",
		mrDemoSeed, splits, mrDemoReduce, mrDemoTaskTimeout.Milliseconds())))
	c.Console.WaitFor(t, "ftvm-guest mapreduce-coordinator listening", c.Stopped, bootTimeout)
	workerArgs := "ftvm.workload=mapreduce-worker ftvm.disk=none ftvm.coordinator=" + coordinator
	var pair *guesttest.Pair
	var plain0 *guesttest.Guest
	if protect {
		pair = guesttest.StartPair(t, "worker0", guestConfig(t, sock, 21, workerArgs))
	} else {
		plain0 = guesttest.StartGuest(t, "worker 0", guestConfig(t, sock, 21, workerArgs))
	}
	guesttest.StartGuest(t, "worker 1", guestConfig(t, sock, 22, workerArgs))

	var job mrJob
	// A pair's boot takes longer than a plain VM's (see TestRaftDemo).
	deadline := time.Now().Add(3 * bootTimeout)
	for {
		job.worker0Before = len(worker0Assigned.FindAllString(c.Console.String(), -1))
		if job.worker0Before >= mrDemoKillAfter {
			break
		}
		if strings.Contains(c.Console.String(), "ftvm-guest mapreduce done") || time.Now().After(deadline) {
			t.Fatalf("worker 0 was given %d tasks, not %d, before the job ended or %v passed; coordinator console:\n%s",
				job.worker0Before, mrDemoKillAfter, 3*bootTimeout, c.Console.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if protect {
		job.killed = pair.KillPrimary(t)
		fo := pair.WaitLive(t, 3*time.Minute)
		if !pair.PrimaryKilled() {
			t.Fatal("worker 0's primary did not die of the kill")
		}
		job.failover = fmt.Sprintf("backup live +%v after the kill (%v)", fo.PrimaryLost.Add(fo.Live).Sub(job.killed).Round(time.Millisecond), fo)
	} else {
		job.killed = time.Now()
		plain0.Stop(t)
	}
	line := c.Console.WaitForLine(t, "ftvm-guest mapreduce done", c.Stopped, 2*bootTimeout)
	job.done = time.Now()
	console := c.Console.String()
	m := doneRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no counters in the coordinator's done line %q; console:\n%s", line, console)
	}
	job.elapsed = m[1]
	job.assigned, _ = strconv.Atoi(m[2])
	job.timedOut, _ = strconv.Atoi(m[3])
	job.reexecuted, _ = strconv.Atoi(m[4])
	if n := strings.Count(console, "msg=assigned "); n != job.assigned {
		t.Errorf("the coordinator logged %d assignments but counted %d", n, job.assigned)
	}
	var got []string
	for _, l := range strings.Split(console, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSuffix(l, "\r"), "ftvm-guest mapreduce out "); ok {
			got = append(got, v)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("protected %v: the guests' output differs from a sequential run\nguests:\n%q\nsequential:\n%q\ncoordinator console:\n%s", protect, got, want, console)
	}
	t.Logf("protected %v: worker 0 died after %d tasks; job done %v later; %d assignments, %d timed out, %d re-executed; %d output lines equal the sequential run",
		protect, job.worker0Before, job.done.Sub(job.killed).Round(time.Millisecond), job.assigned, job.timedOut, job.reexecuted, len(got))
	if status := c.WaitExit(t, time.Minute); status != 0 {
		t.Fatalf("the coordinator exited with status %d", status)
	}
	return job
}
