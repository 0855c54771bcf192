package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// memwriteChildEnv makes the test binary run memwrite instead of the tests
// (TestMemwriteSeesItsOwnStall stops that process from outside).
const memwriteChildEnv = "FTVM_TEST_MEMWRITE_CHILD"

func runMemwriteChild() {
	cfg := Config{Workload: "memwrite", Seconds: 4, Params: map[string]string{"mib": "1", "rate": "2000"}}
	if err := memwriteWorkload(context.Background(), cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// memwriteLine is one "ftvm-guest memwrite second=N pages=P stall_ms=S".
type memwriteLine struct{ second, pages, stallMS int }

func parseMemwrite(t *testing.T, line string) (memwriteLine, bool) {
	t.Helper()
	if !strings.HasPrefix(line, "ftvm-guest memwrite second=") {
		return memwriteLine{}, false
	}
	var l memwriteLine
	if _, err := fmt.Sscanf(line, "ftvm-guest memwrite second=%d pages=%d stall_ms=%d", &l.second, &l.pages, &l.stallMS); err != nil {
		t.Fatalf("memwrite line %q: %v", line, err)
	}
	return l, true
}

// TestMemwriteSeesItsOwnStall runs the memwrite workload in a child
// process, stops that process for 600 ms (SIGSTOP, SIGCONT) as a VMM stops a
// guest, and checks the workload's own report: a line per second with
// growing pages, a stall of at least the stop in the second it ended, and
// stalls far below it in the seconds before (the pace is a few ms a clock
// read).
func TestMemwriteSeesItsOwnStall(t *testing.T) {
	if os.Getenv(memwriteChildEnv) == "1" {
		runMemwriteChild()
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMemwriteSeesItsOwnStall$")
	cmd.Env = append(os.Environ(), memwriteChildEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck // gone already when it passed
	const stop = 600 * time.Millisecond
	var lines []memwriteLine
	var all []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		all = append(all, sc.Text())
		l, ok := parseMemwrite(t, sc.Text())
		if !ok {
			continue
		}
		lines = append(lines, l)
		if l.second == 1 { // stop it once, in its second second
			time.Sleep(300 * time.Millisecond)
			if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			time.Sleep(stop)
			if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("memwrite: %v\n%s", err, strings.Join(all, "\n"))
	}
	if len(lines) < 3 {
		t.Fatalf("%d memwrite lines in 4 s, want a line a second:\n%s", len(lines), strings.Join(all, "\n"))
	}
	stalled := -1
	for i, l := range lines {
		if i > 0 && (l.second <= lines[i-1].second || l.pages <= lines[i-1].pages) {
			t.Fatalf("line %d does not move on from the one before: %+v after %+v", i, l, lines[i-1])
		}
		if time.Duration(l.stallMS)*time.Millisecond >= stop && stalled < 0 {
			stalled = i
		}
	}
	if stalled < 0 {
		t.Fatalf("no line reports the %v stop as a stall:\n%s", stop, strings.Join(all, "\n"))
	}
	if first := lines[0]; time.Duration(first.stallMS)*time.Millisecond >= stop/2 {
		t.Fatalf("the first second, before the stop, already reports a stall of %d ms:\n%s", first.stallMS, strings.Join(all, "\n"))
	}
	t.Logf("stall seen in line %d: %+v (lines %+v)", stalled, lines[stalled], lines)
}
