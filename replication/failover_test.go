package replication_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/kv"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
	"github.com/ftvm/ftvm/storage/server"
	"github.com/ftvm/ftvm/testbench/kvclient"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// The failover trials CI runs, each on a fresh pair. $FTVM_KILL_TRIALS
// and $FTVM_PARTITION_TRIALS raise them (`make soak`), never lower them.
// TestThreeFailoversWithReprotection kills three more primaries (arbiter
// directory), so CI kills six in all.
const (
	killTrials      = 3
	partitionTrials = 3
)

// trialsWanted is the number of trials to run: at least min.
func trialsWanted(env string, least int) int {
	n, err := strconv.Atoi(os.Getenv(env))
	if err != nil {
		return least
	}
	return max(n, least)
}

// runTrials runs trial n times as subtests and logs the tally and a
// histogram of the clients' pauses (the longest wait of a request in
// flight at the fault).
func runTrials(t *testing.T, n int, trial func(t *testing.T, i int) time.Duration) {
	var pauses []time.Duration
	passed := 0
	for i := range n {
		var pause time.Duration
		if t.Run(fmt.Sprintf("trial%d", i+1), func(t *testing.T) { pause = trial(t, i) }) {
			passed++
			pauses = append(pauses, pause)
		}
	}
	p50, p99, mx := quantiles(pauses)
	t.Logf("%d of %d trials passed; pause across the fault p50 %v p99 %v max %v; histogram:\n%s",
		passed, n, p50.Round(time.Millisecond), p99.Round(time.Millisecond), mx.Round(time.Millisecond), histogram(pauses))
}

// A trial's fixed minimum work: its clients, and the requests answered
// before the fault and invoked after it (the second proves the survivor
// served them, not the side that died).
const (
	trialClients      = 2
	minOpsBeforeFault = 10
	minOpsAfterFault  = 10
	minPutsAfterFault = 3
	// trialBound ends the clients of a trial that stopped making
	// progress; the minimum work then fails it.
	trialBound = 6 * time.Minute
)

// trialStorage is where a kill trial's disks and arbiter record live.
type trialStorage int

const (
	// Each VMM opens the disk files; the record is a directory's files.
	storageDirs trialStorage = iota
	// A storage server owns disks and record and fences stale writers.
	storageServed
	// The same, but the server is down when the primary dies and comes
	// back storageOutage later: the backup must wait, not go live.
	storageServedDown
)

const storageOutage = 6 * time.Second

func (k trialStorage) String() string {
	return [...]string{"arbiter directory", "storage server", "storage server down at the kill"}[k]
}

// TestKillPrimaryBackupGoesLive is the kill-the-primary proof, killTrials
// times, each on a fresh pair: two clients with a recorded history talk to
// the kv guest through the switch's port forward, and at a random point
// the primary's process is SIGKILLed. In every trial: no client sees an
// error (their connections carry on), the history with a read-back of
// every key through the live guest is linearizable (porcupine), the disk
// holds what the read-back saw, the primary is dead and the backup live,
// and the arbiter's generation went up by one. The trials vary where the
// record lives; in the last the storage server is down when the primary
// dies, and the backup waits, saying why, until it is back.
func TestKillPrimaryBackupGoesLive(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	// Where the record lives, by trial (then round again).
	kinds := []trialStorage{storageDirs, storageServed, storageServedDown, storageDirs, storageServed}
	runTrials(t, trialsWanted("FTVM_KILL_TRIALS", killTrials), func(t *testing.T, i int) time.Duration {
		return killTrial(t, kinds[i%len(kinds)])
	})
}

// killTrial runs one kill trial and returns the clients' pause.
func killTrial(t *testing.T, kind trialStorage) time.Duration {
	s := newPairSetup(t)
	var arb arbiter.Arbiter
	var arbDir string
	var srv *storageServerRun
	if kind == storageDirs {
		arbDir = filepath.Join(t.TempDir(), "arbiter")
		dir, err := arbiter.OpenDir(arbDir)
		if err != nil {
			t.Fatal(err)
		}
		arb = dir
	} else {
		srv = startStorageServer(t, s.storeDir)
		client, err := server.Dial(context.Background(), "unix", srv.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		arb = client
		s.inst.StorageServer, s.inst.Pair = srv.sock, "kv"
	}
	before, err := arb.Read(context.Background(), "kv")
	if err != nil {
		t.Fatalf("read the record before the trial: %v", err)
	}
	var status atomic.Pointer[func() replication.BackupStatus]
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(t, bctx, replication.BackupConfig{Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "the test's backup",
		Running: func(f func() replication.BackupStatus) { status.Store(&f) }})
	backupStatus := func() replication.BackupStatus {
		if f := status.Load(); f != nil {
			return (*f)()
		}
		return replication.BackupStatus{}
	}
	srvSock := ""
	if srv != nil {
		srvSock = srv.sock
	}
	cmd, perr := s.startPrimaryProcess(t, arbDir, srvSock)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("backup status: %v", backupStatus())
		}
	})

	var atKill replication.BackupStatus
	var waited string
	faultErr := make(chan error, 1)
	tr := runTrialClients(t, s.fwd, func() time.Time {
		if kind == storageServedDown {
			// Frozen first, so the primary dies of the kill, not of its
			// own failed disk writes a moment earlier.
			cmd.Process.Signal(syscall.SIGSTOP)
			srv.stop()
		}
		atKill = backupStatus()
		killed := time.Now()
		if err := cmd.Process.Kill(); err != nil {
			faultErr <- err
			return killed
		}
		if kind != storageServedDown {
			faultErr <- nil
			return killed
		}
		// Storage unreachable: the backup must say it waits, and must not
		// go live, until the server is back.
		var err error
		for deadline := time.Now().Add(storageOutage); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			st := backupStatus()
			if st.Failover != nil || strings.HasPrefix(st.State, "live") {
				err = fmt.Errorf("the backup went live while storage was unreachable: %v", st)
				break
			}
			if strings.Contains(st.State, "cannot reach the arbiter") {
				waited = st.State
			}
		}
		if err == nil && waited == "" {
			err = fmt.Errorf("the backup did not say it waits for storage in %v: %v", storageOutage, backupStatus())
		}
		srv.start(t)
		faultErr <- err
		return killed
	})
	if err := <-faultErr; err != nil {
		t.Fatal(err)
	}

	after, err := arb.Read(context.Background(), "kv")
	if err != nil || after.Generation != before.Generation+1 || after.Owner != "the test's backup" {
		t.Fatalf("record after the kill %v, %v; want generation %d owned by the backup", after, err, before.Generation+1)
	}
	// Exactly one side live: the primary's process died of the kill, the
	// backup says it is live.
	if err := cmd.Wait(); !killedBySignal(err, syscall.SIGKILL) {
		t.Fatalf("the primary's process ended with %v, want killed", err)
	}
	st := backupStatus()
	if !strings.HasPrefix(st.State, "live") || st.Failover == nil {
		t.Fatalf("the backup is not live after the kill: %v", st)
	}
	if st.Exit <= st.LogExit {
		t.Fatalf("the live backup's status counts no exits past the log's last (#%d): at exit #%d", st.LogExit, st.Exit)
	}
	bcancel()
	b := <-backup
	if b.err != nil || !b.res.WentLive || b.res.PrimaryErr == nil {
		t.Fatalf("backup: %v (went live %v)\nprimary's stderr:\n%s", b.err, b.res != nil && b.res.WentLive, lastLines(perr.String(), 30))
	}
	if srv != nil {
		srv.stop()
	}
	tr.checkDisk(t, s.storeDir, "data")
	if waited != "" {
		t.Logf("while storage was down the backup said: %s", waited)
	}
	t.Logf("%v: killed at backup lag %d exits (%v); %s; backup: %v",
		kind, atKill.LogExit-min(atKill.LogExit, atKill.Exit), atKill.Log.LagTime.Round(time.Millisecond), tr, b.res.Failover)
	return tr.pause
}

// TestPartitionLeavesExactlyOneSide, partitionTrials times on fresh pairs:
// the log channel between primary and backup goes silent both ways while
// the arbiter stays reachable. Both sides find the other silent after the
// peer timeout and claim the record; exactly one wins and runs on, the
// other stops with a LostArbitrationError and releases nothing. The
// clients keep their connections, their history with a read-back is
// linearizable and the disk holds what the read-back saw.
func TestPartitionLeavesExactlyOneSide(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	runTrials(t, trialsWanted("FTVM_PARTITION_TRIALS", partitionTrials), func(t *testing.T, _ int) time.Duration {
		return partitionTrial(t)
	})
}

// partitionTrial runs one partition trial and returns the clients' pause.
func partitionTrial(t *testing.T) time.Duration {
	s := newPairSetup(t)
	arb, err := arbiter.OpenDir(filepath.Join(t.TempDir(), "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(t, bctx, replication.BackupConfig{Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "backup"})
	proxy := newPartitionProxy(t, s.logSock)
	pr := s.startPrimary(t, replication.PrimaryConfig{Peer: "unix:" + proxy.sock, Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "primary"})
	tr := runTrialClients(t, s.fwd, func() time.Time {
		proxy.partition()
		return time.Now()
	})
	rec, err := arb.Read(context.Background(), "kv")
	if err != nil || rec.Generation != 1 {
		t.Fatalf("arbiter record %v, %v; want generation 1", rec, err)
	}
	// The loser stops by itself; the winner runs until the test stops it.
	var lost *replication.LostArbitrationError
	switch rec.Owner {
	case "primary":
		b := <-backup
		if !errors.As(b.err, &lost) {
			t.Fatalf("the primary won, but the backup ended with %v", b.err)
		}
		if st := pr.p.Status(); !strings.HasPrefix(st.State, "unprotected") {
			t.Fatalf("the primary won, but its state is %q", st.State)
		}
		pr.cancel()
		if pd := pr.wait(); pd.err != nil {
			t.Fatalf("the winning primary after a clean stop: %v", pd.err)
		}
	case "backup":
		pd := pr.wait()
		if !errors.As(pd.err, &lost) {
			t.Fatalf("the backup won, but the primary ended with %v", pd.err)
		}
		bcancel()
		b := <-backup
		if b.err != nil || !b.res.WentLive {
			t.Fatalf("the winning backup: %v (went live %v)", b.err, b.res != nil && b.res.WentLive)
		}
	default:
		t.Fatalf("record owned by %q", rec.Owner)
	}
	tr.checkDisk(t, s.storeDir, "data")
	t.Logf("partitioned; %s won generation 1; %s", rec.Owner, tr)
	return tr.pause
}

// trialRun is what a trial's clients did, as the test recorded it.
type trialRun struct {
	res     kvclient.Result
	h       *kvclient.History
	rb      kvclient.ReadBack
	verdict kvclient.Verdict
	// readBack maps each key to the answer its read-back GET got.
	readBack map[string]string
	// before, after: requests answered before the fault, and invoked and
	// answered after it; putsAfter the PUTs among the latter; pause the
	// longest wait of a request in flight at the fault.
	before, after, putsAfter int
	pause                    time.Duration
	// faultAfter is how many answers the fault waited for; faulted is
	// when it struck.
	faultAfter int
	faulted    time.Time
}

func (tr *trialRun) String() string {
	return fmt.Sprintf("clients: %v; fault after %d answers; %d answered before it, %d after (%d PUTs), longest wait across it %v; read back %d keys; %v",
		tr.res, tr.faultAfter, tr.before, tr.after, tr.putsAfter, tr.pause.Round(time.Millisecond), tr.rb.Keys, tr.verdict)
}

// runTrialClients runs trialClients recorded clients against the kv guest
// at addr. Once a random number of requests (minOpsBeforeFault to three
// times that) were answered it calls fault, which returns the instant of
// the fault; the clients go on meanwhile. Once minOpsAfterFault requests
// invoked after that instant were answered, minPutsAfterFault of them
// PUTs, it stops the clients, reads every key back over the first
// connection (recorded in the same history), and checks that no client saw
// an error and that the history is linearizable.
func runTrialClients(t *testing.T, addr string, fault func() time.Time) *trialRun {
	t.Helper()
	ctx := context.Background()
	var conns []*kvclient.Conn
	for range trialClients {
		c, err := kvclient.Dial(ctx, addr, 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	tr := &trialRun{h: kvclient.NewHistory(), faultAfter: minOpsBeforeFault + rand.N(2*minOpsBeforeFault+1)}
	stop, quit, watched := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var completed atomic.Bool
	go func() {
		defer close(watched)
		defer close(stop)
		for len(tr.h.Ops()) < tr.faultAfter {
			if isClosed(quit) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		tr.faulted = fault()
		for !tr.enoughAfter() {
			if isClosed(quit) {
				return
			}
			time.Sleep(25 * time.Millisecond)
		}
		completed.Store(true)
	}()
	// The bound only ends a trial that stopped making progress (its
	// minimum work then fails it); a healthy one stops much earlier.
	res, err := kvclient.RunClients(ctx, conns, kvclient.Options{Duration: trialBound, Stop: stop, History: tr.h})
	close(quit)
	<-watched
	tr.res = res
	if err != nil || res.Failed != 0 {
		t.Fatalf("a client saw an error: %v (%v)", err, res)
	}
	if !completed.Load() {
		t.Fatalf("the clients stopped after %v, before the fault and the work after it: %v", trialBound, res)
	}
	tr.count()
	tr.rb, err = kvclient.ReadBackKeys(ctx, conns[0], tr.h, trialClients, kvclient.DefaultRequestTimeout)
	if err != nil || len(tr.rb.Mismatches) > 0 {
		t.Fatalf("read back: %v; %d keys, wrong: %s", err, tr.rb.Keys, strings.Join(tr.rb.Mismatches, "; "))
	}
	tr.verdict = kvclient.CheckLinearizable(tr.h, 2*time.Minute)
	if !tr.verdict.Linearizable() {
		t.Fatalf("the history is not linearizable: %v", tr.verdict)
	}
	tr.readBack = map[string]string{}
	for _, o := range tr.h.Ops() {
		if o.Client == trialClients && o.Kind == "GET" {
			tr.readBack[o.Key] = o.Answer
		}
	}
	if tr.before < minOpsBeforeFault || tr.after < minOpsAfterFault || tr.putsAfter < minPutsAfterFault {
		t.Fatalf("too little work around the fault: %d requests answered before it (want %d), %d after (want %d), %d PUTs after (want %d)",
			tr.before, minOpsBeforeFault, tr.after, minOpsAfterFault, tr.putsAfter, minPutsAfterFault)
	}
	return tr
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// enoughAfter reports whether the work after the fault is done.
func (tr *trialRun) enoughAfter() bool {
	at := tr.faulted.Sub(tr.h.Start())
	after, puts := 0, 0
	for _, o := range tr.h.Ops() {
		if o.Call > at && !o.Unknown {
			after++
			if o.Kind == "PUT" {
				puts++
			}
		}
	}
	return after >= minOpsAfterFault && puts >= minPutsAfterFault
}

// count sorts the clients' requests around the fault.
func (tr *trialRun) count() {
	at := tr.faulted.Sub(tr.h.Start())
	for _, o := range tr.h.Ops() {
		switch {
		case o.Client == trialClients: // the read-back
		case o.Return < at && !o.Unknown:
			tr.before++
		case o.Call > at:
			tr.after++
			if o.Kind == "PUT" {
				tr.putsAfter++
			}
		default:
			tr.pause = max(tr.pause, o.Wait())
		}
	}
}

// checkDisk compares the kv store on the stopped guest's disk with what
// the read-back got from the live guest: every key's value, or its absence.
func (tr *trialRun) checkDisk(t *testing.T, storeDir, disk string) {
	t.Helper()
	store := diskKV(t, storeDir, disk)
	defer store.Close()
	for k, answer := range tr.readBack {
		v, ok := store.Get([]byte(k))
		onDisk := "NOTFOUND"
		if ok {
			onDisk = "VALUE " + string(v)
		}
		if onDisk != answer {
			t.Fatalf("key %s: the live guest answered %q, its disk holds %q", k, answer, onDisk)
		}
	}
	if len(tr.readBack) == 0 {
		t.Fatal("nothing was read back to compare with the disk")
	}
}

// diskKV opens the kv store the guest left on disk name in storeDir: a
// copy of the image has its ext4 journal replayed (the guest's fsyncs
// may sit only in the journal), debugfs takes the store's log out of it,
// and package kv recovers the log as the guest would.
func diskKV(t *testing.T, storeDir, name string) *kv.Store {
	t.Helper()
	tmp := t.TempDir()
	img := filepath.Join(tmp, "disk.img")
	// The test knows the store's layout: the image itself, read without
	// the store's lock, whoever still holds it.
	copyFile(t, filepath.Join(storeDir, name+".img"), img)
	if out, err := exec.Command(hostTool(t, "e2fsck"), "-y", "-E", "journal_only", img).CombinedOutput(); err != nil && !exitedWith(err, 1) {
		t.Fatalf("replay the disk's journal: %v\n%s", err, out)
	}
	log := filepath.Join(tmp, "kv.log")
	out, err := exec.Command(hostTool(t, "debugfs"), "-R", "dump /kv.log "+log, img).CombinedOutput()
	if _, serr := os.Stat(log); err != nil || serr != nil {
		t.Fatalf("take kv.log off the disk: %v %v\n%s", err, serr, out)
	}
	store, rec, err := kv.Open(log)
	if err != nil {
		t.Fatalf("recover the disk's kv log: %v", err)
	}
	if rec.TornBytes > 0 {
		t.Logf("the disk's kv log ended in a torn record (%d bytes: %s); the guest never acknowledged it", rec.TornBytes, rec.TornReason)
	}
	return store
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// hostTool finds an e2fsprogs tool, which may be in an sbin directory
// that is not on PATH.
func hostTool(t testing.TB, name string) string {
	p, err := findHostTool(name)
	if err != nil {
		t.Fatalf("%v; install e2fsprogs (scripts/setup.sh does)", err)
	}
	return p
}

func findHostTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/sbin, /sbin", name)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func exitedWith(err error, code int) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == code
}

func killedBySignal(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// storageServerRun is a storage server the test can stop and start again
// on the same socket; the disks and the record stay in their directories.
type storageServerRun struct {
	sock   string
	store  *storage.Store
	arb    arbiter.Arbiter
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// startStorageServer serves the disks of storeDir and a directory
// arbiter's records on a unix socket, and returns once it listens.
func startStorageServer(t testing.TB, storeDir string) *storageServerRun {
	store, err := storage.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := arbiter.OpenDir(filepath.Join(t.TempDir(), "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	r := &storageServerRun{sock: filepath.Join(t.TempDir(), "storage.sock"), store: store, arb: dir}
	r.start(t)
	t.Cleanup(r.stop)
	return r
}

// start serves again (after stop) and returns once the socket answers.
func (r *storageServerRun) start(t testing.TB) {
	srv, err := server.New(server.Config{Store: r.store, Arbiter: r.arb})
	if err != nil {
		t.Error(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeUnix(ctx, r.sock)
		srv.Close()
	}()
	r.mu.Lock()
	r.cancel, r.done = cancel, done
	r.mu.Unlock()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", r.sock); err == nil {
			c.Close()
			return
		}
		if i > 100 {
			t.Error("the storage server did not listen")
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop closes the server and its disks (a no-op when it is not serving).
func (r *storageServerRun) stop() {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.cancel, r.done = nil, nil
	r.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// partitionProxy passes a log channel connection through until partition
// is called, then drops every byte both ways and keeps both connections
// open: a network partition, not a crash (no reset, only silence).
type partitionProxy struct {
	sock    string
	dropped atomic.Bool
}

func newPartitionProxy(t testing.TB, target string) *partitionProxy {
	pp := &partitionProxy{sock: filepath.Join(t.TempDir(), "partition.sock")}
	ln, err := net.Listen("unix", pp.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn) {
		b := make([]byte, 64<<10)
		for {
			n, err := src.Read(b)
			if n > 0 && !pp.dropped.Load() {
				if _, err := dst.Write(b[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("unix", target)
			if err != nil {
				in.Close()
				return
			}
			t.Cleanup(func() { in.Close(); out.Close() })
			go pipe(out, in)
			go pipe(in, out)
		}
	}()
	return pp
}

func (pp *partitionProxy) partition() { pp.dropped.Store(true) }
