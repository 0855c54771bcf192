package replication_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// bootSnapshot boots the setup's machine alone, snapshots it at its ready
// line (stopping it there) and returns the snapshot file: a pair's fast
// start.
func bootSnapshot(t *testing.T, s *pairSetup) string {
	t.Helper()
	console := guesttest.NewConsole()
	cfg := s.inst
	cfg.Console = console
	inst, err := instance.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if _, err := inst.Identity(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped := make(chan error, 1)
	go func() {
		reason, err := inst.Run(ctx)
		if err == nil && reason != vm.StoppedCancelled {
			err = fmt.Errorf("guest %v", reason)
		}
		stopped <- err
	}()
	console.WaitFor(t, "ftvm-guest ready", stopped, 5*time.Minute)
	file := filepath.Join(t.TempDir(), "boot.snap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := inst.Snapshot(ctx, w, cancel); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	return file
}

// pairWindow is what a pair did in its first window of wall time.
type pairWindow struct {
	logBytes    uint64        // the primary's log, at the end of the window
	firstAnswer time.Duration // from starting the primary to the kv server's first answer
	ops         int
	digests     uint64 // the backup checked, over the whole run
}

// runPairWindow starts a pair (from the snapshot restore, or booting when
// it is ""), drives kv traffic through it until window has passed since
// the primary started, stops it, and checks the backup matched every
// digest and output hash and every PUT reads back.
func runPairWindow(t *testing.T, s *pairSetup, restore string, window time.Duration) pairWindow {
	t.Helper()
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(t, bctx, replication.BackupConfig{Log: pairLog, Restore: restore})
	start := time.Now()
	pr := s.startPrimary(t, replication.PrimaryConfig{Restore: restore})
	var res pairWindow
	atWindow := make(chan uint64, 1)
	stopSample := time.AfterFunc(window-time.Since(start), func() { atWindow <- pr.p.Status().Recorder.Bytes })
	defer stopSample.Stop()

	c := dialKVClient(t, s.fwd)
	defer c.conn.Close()
	res.firstAnswer = time.Since(start)
	for i := 0; time.Since(start) < window || c.ops < 30; i++ {
		c.mixed(t, i)
	}
	res.logBytes = <-atWindow
	c.readBack(t)
	res.ops = c.ops

	pr.cancel()
	pd := pr.wait()
	if pd.err != nil {
		t.Fatalf("primary: %v", pd.err)
	}
	b := <-backup
	if b.err != nil {
		t.Fatalf("backup: %v\nprimary console:\n%s", b.err, pr.console.String())
	}
	if b.res.PrimaryErr != nil {
		t.Fatalf("the backup's log ended with %v, want the primary's clean close", b.res.PrimaryErr)
	}
	ps, bs := pd.res.Final, b.res.Final
	if bs.Replayer.Digests != ps.Recorder.Digests || bs.Replayer.Digests == 0 {
		t.Fatalf("backup checked %d digests, the primary logged %d", bs.Replayer.Digests, ps.Recorder.Digests)
	}
	if bs.Replayer.Outputs != ps.Recorder.Outputs || bs.Replayer.Outputs == 0 {
		t.Fatalf("backup matched %d output hashes, the primary logged %d", bs.Replayer.Outputs, ps.Recorder.Outputs)
	}
	res.digests = bs.Replayer.Digests
	return res
}

// TestPairStartsFromBootSnapshot: both sides of a pair start from one
// snapshot of the guest at its ready line instead of booting; the pair
// serves kv traffic, the backup matches every digest and output, and the
// log of its first window is compared with a pair booted from power-on
// (which spends the window's start logging the boot). The window is 30 s,
// or $FTVM_FASTSTART_WINDOW.
func TestPairStartsFromBootSnapshot(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	window := 30 * time.Second
	if w, err := time.ParseDuration(os.Getenv("FTVM_FASTSTART_WINDOW")); err == nil && w > 0 {
		window = w
	}
	s := newPairSetup(t)
	snapStart := time.Now()
	snap := bootSnapshot(t, s)
	snapTook := time.Since(snapStart)
	fast := runPairWindow(t, s, snap, window)
	t.Logf("from the snapshot (booted and taken in %v): first answer %v after starting the primary; log %d bytes in %v; %d requests, %d digests matched",
		snapTook.Round(time.Millisecond), fast.firstAnswer.Round(time.Millisecond), fast.logBytes, window, fast.ops, fast.digests)

	cold := runPairWindow(t, newPairSetup(t), "", window)
	t.Logf("from power-on: first answer %v after starting the primary; log %d bytes in %v; %d requests, %d digests matched",
		cold.firstAnswer.Round(time.Millisecond), cold.logBytes, window, cold.ops, cold.digests)
	t.Logf("log bytes in the first %v, power-on / snapshot: %.1fx", window, float64(cold.logBytes)/float64(max(fast.logBytes, 1)))
}
