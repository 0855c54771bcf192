package replication_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/storage/arbiter"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// chainBackupEnv makes the test binary a backup process that, once live,
// protects itself again by making a new backup at the next address:
// "listen|image|storage|switch|arbiter|next|statusfile". It writes its
// status to statusfile twice a second and stops cleanly on SIGTERM.
const chainBackupEnv = "FTVM_TEST_CHAIN_BACKUP"

func chainBackupProcess(spec string) int {
	f := strings.Split(spec, "|")
	if len(f) != 7 {
		fmt.Fprintln(os.Stderr, "bad", chainBackupEnv)
		return 2
	}
	listen, next, statusFile := f[0], f[5], f[6]
	cfg := instance.Config{
		Image: f[1], NetSocket: f[3], IP: "192.168.127.2/24", Disks: []string{"data"}, StorageDir: f[2],
		Append: "ftvm.workload=kv ftvm.port=7000", MemoryMiB: 128,
	}
	arb, err := arbiter.OpenDir(f[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, "backup:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	statusDone := make(chan struct{})
	defer close(statusDone)
	_, err = replication.RunBackup(ctx, replication.BackupConfig{
		Instance: cfg, Listen: "unix:" + listen, Log: pairLog, StatusEvery: 5 * time.Second,
		Arbiter: arb, Pair: "kv", Owner: "backup at " + filepath.Base(listen),
		Running: func(status func() replication.BackupStatus) {
			go func() {
				for {
					select {
					case <-statusDone:
						return
					case <-time.After(500 * time.Millisecond):
					}
					tmp := statusFile + ".tmp"
					if os.WriteFile(tmp, []byte(status().String()), 0o644) == nil {
						os.Rename(tmp, statusFile)
					}
				}
			}()
		},
		Live: func(protect replication.ProtectFunc) {
			if next == "" {
				return
			}
			go func() {
				// The next backup may still be starting: ask until it
				// answers or the run ends.
				for ctx.Err() == nil {
					res, err := protect(ctx, replication.PrimaryConfig{Peer: "unix:" + next, Log: pairLog, Owner: "survivor at " + filepath.Base(listen)},
						replication.TransferOptions{Progress: func(p replication.TransferProgress) { fmt.Fprintln(os.Stderr, "transfer:", p) }})
					if err == nil {
						fmt.Fprintln(os.Stderr, "protected again:", res)
						return
					}
					fmt.Fprintln(os.Stderr, "protect:", err)
					time.Sleep(time.Second)
				}
			}()
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "backup:", err)
		return 1
	}
	return 0
}

// chainBackup is a chain backup process of the test.
type chainBackup struct {
	cmd              *exec.Cmd
	stderr           *syncBuffer
	listen, statusAt string
}

func (s *pairSetup) startChainBackup(t *testing.T, listen, arbDir, next string) *chainBackup {
	t.Helper()
	b := &chainBackup{stderr: &syncBuffer{}, listen: listen, statusAt: listen + ".status"}
	b.cmd = exec.Command(os.Args[0], "-test.run=^$")
	b.cmd.Env = append(os.Environ(), chainBackupEnv+"="+strings.Join([]string{listen, s.inst.Image, s.storeDir, s.sock, arbDir, next, b.statusAt}, "|"))
	b.cmd.Stderr = b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		b.cmd.Wait()
		if t.Failed() {
			t.Logf("backup %s's stderr:\n%s", filepath.Base(listen), lastLines(b.stderr.String(), 40))
		}
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(listen); err == nil {
			return b
		}
		if i > 600 {
			t.Fatalf("backup process never listened: %s", b.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// status is the process's last status line.
func (b *chainBackup) status() string {
	s, _ := os.ReadFile(b.statusAt)
	return string(s)
}

// waitFor waits until the status says want, or fails.
func (b *chainBackup) waitFor(what string, bound time.Duration, ok func(status string) bool) error {
	for deadline := time.Now().Add(bound); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if ok(b.status()) {
			return nil
		}
	}
	return fmt.Errorf("backup %s: not %s after %v; status: %s", filepath.Base(b.listen), what, bound, b.status())
}

// digestsMatched reads "digests matched N" from a backup's status line.
func digestsMatched(status string) int {
	i := strings.Index(status, "digests matched ")
	if i < 0 {
		return 0
	}
	var n int
	fmt.Sscanf(status[i+len("digests matched "):], "%d", &n)
	return n
}

// TestThreeFailoversWithReprotection: three failovers in a row under kv
// client load, each followed by automatic re-protection. A pair starts
// (primary P0, backup B1); B1 and each later backup, once live, make the
// next backup from their running guest (pre-copy over the log channel,
// then recording). The test kills P0, waits until B1 is live and B2
// replays B1's log with digests matching, kills B1, and so on until B3 is
// live. The clients' one history across the three failovers, with a
// read-back, is linearizable, none saw an error, the disk holds what the
// read-back saw, and the arbiter's generation went up by three.
func TestThreeFailoversWithReprotection(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	arbDir := filepath.Join(t.TempDir(), "arbiter")
	arb, err := arbiter.OpenDir(arbDir)
	if err != nil {
		t.Fatal(err)
	}
	before, err := arb.Read(context.Background(), "kv")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(s.logSock)
	socks := []string{s.logSock, filepath.Join(dir, "b2.sock"), filepath.Join(dir, "b3.sock")}
	var backups []*chainBackup
	for i, sock := range socks {
		next := ""
		if i+1 < len(socks) {
			next = socks[i+1]
		}
		backups = append(backups, s.startChainBackup(t, sock, arbDir, next))
	}
	primary, perr := s.startPrimaryProcess(t, arbDir, "")
	// The first backup replays before anything is killed.
	if err := backups[0].waitFor("matching digests", 5*time.Minute, func(st string) bool { return digestsMatched(st) >= 3 }); err != nil {
		t.Fatalf("%v\nprimary's stderr:\n%s", err, lastLines(perr.String(), 30))
	}

	faultErr := make(chan error, 1)
	var timeline []string
	tr := runTrialClients(t, s.fwd, func() time.Time {
		victims := []*exec.Cmd{primary, backups[0].cmd, backups[1].cmd}
		var killed time.Time
		for i, victim := range victims {
			survivor := backups[i]
			killed = time.Now()
			if err := victim.Process.Kill(); err != nil {
				faultErr <- err
				return killed
			}
			victim.Wait()
			if err := survivor.waitFor("live", 3*time.Minute, func(st string) bool {
				return strings.HasPrefix(st, "backup live") || strings.HasPrefix(st, "survivor protected again")
			}); err != nil {
				faultErr <- fmt.Errorf("failover %d: %w", i+1, err)
				return killed
			}
			line := fmt.Sprintf("failover %d: %s live %v after the kill", i+1, filepath.Base(survivor.listen), time.Since(killed).Round(time.Millisecond))
			if i+1 < len(backups) {
				next := backups[i+1]
				// Re-protected: the survivor is a primary again and its new
				// backup replays its log, digests matching.
				if err := next.waitFor("replaying the survivor's log with matching digests", 5*time.Minute, func(st string) bool {
					return strings.HasPrefix(st, "backup replaying") && digestsMatched(st) >= 3
				}); err != nil {
					faultErr <- fmt.Errorf("re-protection %d: %w", i+1, err)
					return killed
				}
				line += fmt.Sprintf(", protected again %v after the kill: %s", time.Since(killed).Round(time.Millisecond), survivor.status())
			}
			timeline = append(timeline, line)
		}
		faultErr <- nil
		return killed
	})
	if err := <-faultErr; err != nil {
		t.Fatal(err)
	}
	for _, l := range timeline {
		t.Log(l)
	}
	after, err := arb.Read(context.Background(), "kv")
	if err != nil || after.Generation != before.Generation+3 {
		t.Fatalf("record after three failovers %v, %v; want generation %d", after, err, before.Generation+3)
	}
	last := backups[len(backups)-1]
	last.cmd.Process.Signal(syscall.SIGTERM)
	if err := last.cmd.Wait(); err != nil {
		t.Fatalf("the last survivor did not stop cleanly: %v\n%s", err, lastLines(last.stderr.String(), 30))
	}
	tr.checkDisk(t, s.storeDir, "data")
	t.Logf("%s", tr)
}

// runningVM is a VM running alone in this process, made replicable so it
// can be protected while it runs.
type runningVM struct {
	inst    *instance.Instance
	console *guesttest.Console
	runCtx  context.Context
	stop    context.CancelCauseFunc
	// done gets Run's error once (for WaitFor); finished is closed, and
	// err set, when Run returned.
	done     chan error
	finished chan struct{}
	err      error
}

func (s *pairSetup) startRunningVM(t testing.TB, appendArgs string, memMiB int) *runningVM {
	t.Helper()
	// The backup made later must describe the same machine.
	s.inst.Append, s.inst.MemoryMiB = appendArgs, memMiB
	cfg := s.inst
	cfg.Replicable = true
	r := &runningVM{console: guesttest.NewConsole(), done: make(chan error, 1), finished: make(chan struct{})}
	cfg.Console = r.console
	inst, err := instance.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.inst = inst
	r.runCtx, r.stop = context.WithCancelCause(context.Background())
	go func() {
		_, err := inst.Run(r.runCtx)
		r.err = err
		close(r.finished)
		r.done <- err
	}()
	t.Cleanup(func() {
		r.stop(nil)
		select {
		case <-r.finished:
		case <-time.After(time.Minute):
		}
		inst.Close()
	})
	return r
}

// memwriteSecond is one of the guest's "ftvm-guest memwrite second=N
// pages=P stall_ms=S" lines: P pages written by second N of its run, and
// the longest the guest went between two clock reads in that second.
type memwriteSecond struct{ sec, pages, stallMS int }

func memwriteSeconds(console string) []memwriteSecond {
	var out []memwriteSecond
	for _, line := range strings.Split(console, "\n") {
		var m memwriteSecond
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "ftvm-guest memwrite second=%d pages=%d stall_ms=%d", &m.sec, &m.pages, &m.stallMS); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// memwriteRate is the guest's pages per second since the line before, by
// the second of the later line.
func memwriteRate(console string) map[int]int {
	rate := map[int]int{}
	secs := memwriteSeconds(console)
	for i := 1; i < len(secs); i++ {
		if d := secs[i].sec - secs[i-1].sec; d > 0 {
			rate[secs[i].sec] = (secs[i].pages - secs[i-1].pages) / d
		}
	}
	return rate
}

// lastMemwriteSecond is the label of the guest's last memwrite line in
// console, 0 if none.
func lastMemwriteSecond(console string) int {
	secs := memwriteSeconds(console)
	if len(secs) == 0 {
		return 0
	}
	return secs[len(secs)-1].sec
}

// TestProtectRunningVMUnderMemoryWrites: a VM running alone whose guest
// rewrites a 16 MiB buffer at about 2000 pages a second (CPU-paced),
// faster than the nested host's channel sends it (a few MiB/s), is
// protected while it runs (pre-copy over the log channel, then recording).
// The rounds do not shrink until auto-converge throttles the guest; the
// copy then ends. The test sees from the guest's own console that it wrote
// throughout the copy, and that the new backup then replays the guest with
// its digests matching the primary's and stops cleanly with it; it logs
// the guest's rate and the longest stops it saw. (BenchmarkProtect compares
// the pause with and without auto-converge.)
func TestProtectRunningVMUnderMemoryWrites(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	protectMemwriteVM(t, "ftvm.workload=memwrite ftvm.mib=16 ftvm.rate=2000", replication.TransferOptions{})
}

// protectMemwriteVM boots a VM alone running the memwrite workload,
// protects it with opts while the guest writes, checks that the backup
// replays it with matching digests and that the guest wrote throughout,
// and stops the pair.
func protectMemwriteVM(t *testing.T, workload string, opts replication.TransferOptions) {
	t.Helper()
	s := newPairSetup(t)
	vmRun := s.startRunningVM(t, workload, 128)
	waitMemwrite(t, vmRun, 3)

	var status atomic.Pointer[func() replication.BackupStatus]
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(t, bctx, replication.BackupConfig{Log: pairLog, StatusEvery: 5 * time.Second,
		Running: func(f func() replication.BackupStatus) { status.Store(&f) }})
	var rounds []string
	opts.Progress = func(pr replication.TransferProgress) { rounds = append(rounds, pr.String()) }
	secStart := lastMemwriteSecond(vmRun.console.String())
	copyStart := time.Now()
	p, res, err := replication.Protect(context.Background(), vmRun.inst, vmRun.runCtx, vmRun.stop,
		replication.PrimaryConfig{Peer: "unix:" + s.logSock, Log: pairLog}, opts)
	copyTook := time.Since(copyStart)
	// The stop for the last round ends just before Protect returns; the
	// guest reports it in its first line after that (whose label may be
	// seconds later: the guest's clock ran on while it was stopped).
	atEnd := vmRun.console.String()
	secEnd := lastMemwriteSecond(atEnd)
	if err != nil {
		t.Fatalf("protect: %v\nrounds:\n  %s", err, strings.Join(rounds, "\n  "))
	}
	finish := p.Start(context.Background())
	t.Logf("transfer (%+v): %v\nrounds:\n  %s", opts, res, strings.Join(rounds, "\n  "))

	// The guest goes on and the backup replays it, digests matching.
	firstDigests := -1
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		var st replication.BackupStatus
		if f := status.Load(); f != nil {
			st = (*f)()
		}
		if firstDigests < 0 && st.Replayer.Digests > 0 {
			firstDigests = int(st.Replayer.Digests)
		}
		if firstDigests >= 0 && int(st.Replayer.Digests) >= firstDigests+3 {
			break
		}
		select {
		case err := <-s.backupFailed:
			t.Fatalf("the new backup stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new backup does not replay with matching digests: %v", st)
		}
	}
	waitMemwrite(t, vmRun, secEnd+3)

	// Stop: the primary closes the log cleanly and the backup ends there.
	vmRun.stop(nil)
	<-vmRun.finished
	pres, err := finish(vm.StoppedCancelled, vmRun.err)
	if err != nil {
		t.Fatalf("the protected VM's primary: %v (%v)", err, pres)
	}
	bcancel()
	if b := <-backup; b.err != nil {
		t.Fatalf("backup: %v", b.err)
	}

	// What the guest itself saw, through the first line it printed
	// after the copy ended.
	console := vmRun.console.String()
	rate := memwriteRate(console)
	secReport := secEnd
	if next := memwriteSeconds(console[len(atEnd):]); len(next) > 0 {
		secReport = next[0].sec
	}
	var before, during, after []int
	var stalls []int
	for _, m := range memwriteSeconds(console) {
		switch {
		case m.sec <= 1: // its first second includes calibrating the pace
		case m.sec <= secStart:
			before = append(before, rate[m.sec])
		case m.sec <= secReport:
			during = append(during, rate[m.sec])
			stalls = append(stalls, m.stallMS)
		default:
			after = append(after, rate[m.sec])
		}
	}
	t.Logf("guest's pages written per second: before the copy %v, while it ran %v, after %v (copy %v, guest seconds %d-%d); its longest stop in each second of the copy (ms): %v",
		before, during, after, copyTook.Round(time.Millisecond), secStart+1, secReport, stalls)
	if len(before) < 1 || len(during) < 2 || len(after) < 2 || slices.Min(during) == 0 {
		t.Fatalf("the guest did not write throughout the copy: %v", rate)
	}
}

// alterOnce alters the next received frame it replays once armed (its
// last byte flipped): the injected divergence of TestDivergenceIsResynced.
// The guest's receive buffer then differs from the primary's, which the
// next state digest shows. (An altered clock value is not a sure one: a
// device may fold it into state the digests do not cover and the guest
// never sees.)
type alterOnce struct {
	vm.Replayer
	armed *atomic.Bool
}

func (a alterOnce) Next(n uint64, g vm.GuestState) (vm.Input, bool, error) {
	in, ok, err := a.Replayer.Next(n, g)
	if err == nil && ok && in.Kind == vm.InputFrame && len(in.Data) > 0 && a.armed.CompareAndSwap(true, false) {
		d := append([]byte(nil), in.Data...)
		d[len(d)-1] ^= 0xff
		in.Data = d
	}
	return in, ok, err
}

// TestDivergenceIsResynced: under kv client load, the backup is made to
// replay one received frame with a byte the primary's guest did not get. The
// backup must not run on silently: it diverges, throws its VM away and
// waits for a fresh copy; the primary finds it lost, wins the record,
// copies its running guest to it and replicates again, the digests
// matching from there. The clients see no error and their history with a
// read-back is linearizable; the backup counts one resync and the primary
// one re-protection.
func TestDivergenceIsResynced(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	arb := openArbiterDir(t)
	var armed atomic.Bool
	var status atomic.Pointer[func() replication.BackupStatus]
	backupStatus := func() replication.BackupStatus {
		if f := status.Load(); f != nil {
			return (*f)()
		}
		return replication.BackupStatus{}
	}
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(t, bctx, replication.BackupConfig{Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "the test's backup",
		Resync: true, StatusEvery: 5 * time.Second,
		WrapReplayer: func(r vm.Replayer) vm.Replayer { return alterOnce{Replayer: r, armed: &armed} },
		Running:      func(f func() replication.BackupStatus) { status.Store(&f) }})
	pr := s.startPrimary(t, replication.PrimaryConfig{Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "the test's primary", ProtectAgain: true})

	var resynced replication.BackupStatus
	faultErr := make(chan error, 1)
	tr := runTrialClients(t, s.fwd, func() time.Time {
		at := time.Now()
		armed.Store(true)
		// Resynced: a second session replays the primary's log again,
		// its digests matching.
		err := func() error {
			for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				st := backupStatus()
				if st.Resyncs == 1 && strings.HasPrefix(st.State, "replaying") && st.Replayer.Digests >= 3 {
					resynced = st
					return nil
				}
				if st.Resyncs > 1 {
					return fmt.Errorf("%d resyncs for one altered value: %v", st.Resyncs, st)
				}
				select {
				case err := <-s.backupFailed:
					return fmt.Errorf("the backup stopped: %v", err)
				default:
				}
			}
			return fmt.Errorf("not resynced: backup %v; primary %v", backupStatus(), pr.p.Status())
		}()
		faultErr <- err
		return at
	})
	if err := <-faultErr; err != nil {
		t.Fatal(err)
	}
	if armed.Load() {
		t.Fatal("the altered value was never replayed")
	}
	pst := pr.p.Status()
	if pst.ProtectedAgain != 1 || !strings.HasPrefix(pst.State, "replicating") {
		t.Fatalf("the primary after the resync: %v; want replicating, protected again once", pst)
	}
	t.Logf("resynced: %v\nprimary: %v\n%s", resynced, pst, tr)
	pr.cancel()
	<-pr.finished
	if pr.result.err != nil {
		t.Fatalf("primary: %v", pr.result.err)
	}
	b := <-backup
	if b.err != nil || b.res.Resyncs != 1 {
		t.Fatalf("backup: %v (resyncs %d)", b.err, b.res.Resyncs)
	}
}

// BenchmarkProtect measures re-protection's state transfer: a VM running
// alone is protected while it runs (pre-copy over the log channel, then
// recording), for a 128 MiB and a 512 MiB guest, idle and rewriting 32 MiB
// as fast as it can. It reports the guest's pause (the last round), the
// whole transfer, the rounds, what was sent and how far auto-converge
// throttled, and the pause as a fraction of VMware FT's < 1 s anchor. One
// transfer per case (-benchtime 1x); the new backup must then match the
// primary's digests.
func BenchmarkProtect(b *testing.B) {
	for _, mem := range []int{128, 512} {
		for _, load := range []struct{ name, append, ready string }{
			{"idle", "ftvm.workload=sleep ftvm.seconds=100000", "ftvm-guest ready"},
			{"writing", "ftvm.workload=memwrite ftvm.mib=32 ftvm.rate=4000", "ftvm-guest memwrite second=2 "},
		} {
			b.Run(fmt.Sprintf("%dMiB/%s", mem, load.name), func(b *testing.B) {
				if kvmhost.RanElsewhere(b) {
					return
				}
				for range b.N {
					res := benchProtectOnce(b, mem, load.append, load.ready, replication.TransferOptions{})
					b.Logf("%d MiB %s: %v (host: nested KVM under QEMU TCG)", mem, load.name, res)
					// The same guest without auto-converge: what it saves.
					// Run before any metric is reported: its timer reset
					// would delete them.
					var alone replication.TransferResult
					if load.name == "writing" {
						alone = benchProtectOnce(b, mem, load.append, load.ready, replication.TransferOptions{NoAutoConverge: true})
						b.Logf("%d MiB %s without auto-converge: %v", mem, load.name, alone)
					}
					b.ReportMetric(float64(res.Pause)/float64(time.Millisecond), "pause-ms")
					b.ReportMetric(res.Total.Seconds(), "total-s")
					b.ReportMetric(float64(res.Rounds), "rounds")
					b.ReportMetric(float64(res.Bytes)/(1<<20), "MiB-sent")
					b.ReportMetric(res.MaxThrottle, "max-throttle")
					b.ReportMetric(res.Pause.Seconds()/1.0, "pause/vmware-1s")
					if load.name == "writing" {
						b.ReportMetric(float64(alone.Pause)/float64(time.Millisecond), "no-autoconverge-pause-ms")
						b.ReportMetric(float64(alone.Pause)/float64(max(res.Pause, time.Microsecond)), "pause-without/with-autoconverge")
					}
				}
			})
		}
	}
}

func benchProtectOnce(b *testing.B, mem int, appendArgs, ready string, opts replication.TransferOptions) replication.TransferResult {
	s := newPairSetup(b)
	vmRun := s.startRunningVM(b, appendArgs, mem)
	vmRun.console.WaitFor(b, ready, vmRun.done, 10*time.Minute)
	var status atomic.Pointer[func() replication.BackupStatus]
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(b, bctx, replication.BackupConfig{Log: pairLog,
		Running: func(f func() replication.BackupStatus) { status.Store(&f) }})
	b.ResetTimer()
	p, res, err := replication.Protect(context.Background(), vmRun.inst, vmRun.runCtx, vmRun.stop,
		replication.PrimaryConfig{Peer: "unix:" + s.logSock, Log: pairLog}, opts)
	b.StopTimer()
	if err != nil {
		b.Fatalf("protect: %v", err)
	}
	finish := p.Start(context.Background())
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		var st replication.BackupStatus
		if f := status.Load(); f != nil {
			st = (*f)()
		}
		if st.Replayer.Digests >= 3 {
			break
		}
		select {
		case err := <-s.backupFailed:
			b.Fatalf("the new backup stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("the new backup does not replay with matching digests: %v", st)
		}
	}
	vmRun.stop(nil)
	<-vmRun.finished
	if _, err := finish(vm.StoppedCancelled, vmRun.err); err != nil {
		b.Fatalf("primary: %v", err)
	}
	bcancel()
	if r := <-backup; r.err != nil {
		b.Fatalf("backup: %v", r.err)
	}
	return res
}

// openArbiterDir is a fresh arbiter record directory for one test.
func openArbiterDir(t testing.TB) *arbiter.Dir {
	t.Helper()
	arb, err := arbiter.OpenDir(filepath.Join(t.TempDir(), "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	return arb
}

// waitMemwrite waits until the guest's memwrite reported second sec or a
// later one (it reports the second it prints in, so some are skipped).
func waitMemwrite(t *testing.T, r *runningVM, sec int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		for s := range memwriteRate(r.console.String()) {
			if s >= sec {
				return
			}
		}
		select {
		case err := <-r.done:
			t.Fatalf("the VM stopped before memwrite's second %d: %v\n%s", sec, err, r.console.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no memwrite second %d or later within 5 min:\n%s", sec, r.console.String())
		}
	}
}
