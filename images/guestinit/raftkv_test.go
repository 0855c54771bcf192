package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raftkv"
	"github.com/ftvm/ftvm/testbench/guesttest"
)

// inProcess is a workload run as the guest's child process would run it,
// with its console in a Console.
type inProcess struct {
	console *guesttest.Console
	cancel  context.CancelFunc
	ended   chan struct{} // closed when the workload returned
	err     error         // what it returned, once ended is closed
	// stopped gets the error once, for Console.WaitFor.
	stopped chan error
}

// runInProcess starts w with the configuration cmdline asks for; the
// test's end stops it.
func runInProcess(t *testing.T, w Workload, cmdline, dataDir string) *inProcess {
	t.Helper()
	cfg, err := ParseCmdline(cmdline, registry())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = dataDir
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{console: guesttest.NewConsole(), cancel: cancel, ended: make(chan struct{}), stopped: make(chan error, 1)}
	go func() {
		p.err = w(ctx, cfg, p.console)
		close(p.ended)
		p.stopped <- p.err
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

// stop cancels the workload and returns its error.
func (p *inProcess) stop() error {
	p.cancel()
	<-p.ended
	return p.err
}

// wait returns the workload's error once it ends by itself.
func (p *inProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.ended:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("workload still running after %v; console:\n%s", timeout, p.console.String())
		return nil
	}
}

// TestRaftKVWorkload runs three replicas as the raftkv workload, each
// with its own data directory, and a clerk against them; a replica is
// stopped and started again on its directory, and finds its Raft state.
func TestRaftKVWorkload(t *testing.T) {
	var addrs []string
	for range 3 {
		addrs = append(addrs, guesttest.FreeAddr(t))
	}
	cmdline := func(id int) string {
		return fmt.Sprintf("ftvm.workload=raftkv ftvm.id=%d ftvm.peers=%s ftvm.snapshot-bytes=4000 ftvm.election-ms=1500", id, strings.Join(addrs, ","))
	}
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	replicas := make([]*inProcess, 3)
	for i := range 3 {
		replicas[i] = runInProcess(t, raftkvWorkload, cmdline(i), dirs[i])
		replicas[i].console.WaitFor(t, "ftvm-guest raftkv listening id="+strconv.Itoa(i), replicas[i].stopped, 10*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := raftkv.NewHistory()
	ck := raftkv.NewTCPClerk(addrs)
	step := func(i int) {
		t.Helper()
		key, v := fmt.Sprintf("k%d", i%3), fmt.Sprintf("%d;", i)
		call := h.Now()
		if err := ck.Append(ctx, key, v); err != nil {
			t.Fatal(err)
		}
		h.Add(0, raftkv.ModelInput{Kind: raftkv.OpAppend, Key: key, Value: v}, raftkv.ModelOutput{}, call, h.Now())
		call = h.Now()
		got, err := ck.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		h.Add(0, raftkv.ModelInput{Kind: raftkv.OpGet, Key: key}, raftkv.ModelOutput{Value: got}, call, h.Now())
	}
	for i := range 20 {
		step(i)
	}
	if err := replicas[0].stop(); err != nil {
		t.Fatalf("replica 0: %v", err)
	}
	for i := 20; i < 30; i++ {
		step(i)
	}
	r := runInProcess(t, raftkvWorkload, cmdline(0), dirs[0])
	r.console.WaitFor(t, "ftvm-guest raftkv listening id=0", r.stopped, 10*time.Second)
	m := regexp.MustCompile(`restored_bytes=(\d+)`).FindStringSubmatch(r.console.String())
	if m == nil || m[1] == "0" {
		t.Fatalf("restarted replica found no Raft state; console:\n%s", r.console.String())
	}
	for i := 30; i < 40; i++ {
		step(i)
	}
	if err := h.Check(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestRaftKVWorkloadNeedsADisk(t *testing.T) {
	p := runInProcess(t, raftkvWorkload, "ftvm.workload=raftkv ftvm.id=0 ftvm.peers=127.0.0.1:1", "")
	if err := p.wait(t, 10*time.Second); err == nil || !strings.Contains(err.Error(), "no data disk") {
		t.Fatalf("without a data directory: %v", err)
	}
}
