package replication_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/storage/arbiter"
	"github.com/ftvm/ftvm/storage/server"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"golang.org/x/sys/unix"
)

// VMware FT's published log bandwidth (Scales et al. 2010, table 1): idle
// guests 0.5-1.5 Mbit/s, loaded ones 1.5-18 Mbit/s. Reported as ratios.
const (
	vmwareIdleMaxMbps = 1.5
	vmwareLoadMaxMbps = 18
)

// window measures the primary's log over at least d and until during
// returns (it is asked to stop once d passed): Mbit/s, checkpoints per
// second, and the worst backup lag seen (sampled every 100 ms).
func window(p *replication.Primary, d time.Duration, during func(stop <-chan struct{})) (w windowStats) {
	before := p.Status()
	start := time.Now()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if during != nil {
			during(stop)
		}
	}()
	// Sample until d passed (then ask during to stop) and during returned.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	stopped := false
	for finished := false; !finished; {
		select {
		case <-done:
			finished = time.Since(start) >= d
			done = nil
		case <-tick.C:
		}
		if !stopped && time.Since(start) >= d {
			close(stop)
			stopped = true
			if done == nil {
				finished = true
			}
		}
		st := p.Status()
		w.maxLag = max(w.maxLag, st.Log.LagTime)
		w.maxLagEntries = max(w.maxLagEntries, st.Log.LagEntries)
	}
	after := p.Status()
	secs := time.Since(start).Seconds()
	w.mbps = float64(after.Recorder.Bytes-before.Recorder.Bytes) * 8 / 1e6 / secs
	w.ckptMbps = float64(after.Recorder.CheckpointSize-before.Recorder.CheckpointSize) * 8 / 1e6 / secs
	w.ckptPerSec = float64(after.Recorder.Checkpoints-before.Recorder.Checkpoints) / secs
	return w
}

// windowStats is what window measured. ckptMbps is the part of mbps that
// is checkpoints; the rest is the inputs, VMware's log.
type windowStats struct {
	mbps, ckptMbps, ckptPerSec float64
	maxLag                     time.Duration
	maxLagEntries              uint64
}

// The log bandwidth benchmarks run a pair with an idle guest (sleep), a
// CPU-bound one (hashing, no I/O) and a network-heavy one (kv serving
// ECHO and PUT traffic), and report the log bandwidth of each over 20 s,
// as Mbit/s and as a ratio to VMware FT's upper figure for that class.
// In the nested host the watchdog kicks a guest that computes for long
// without exits, and the log of such a guest is mostly checkpoints, which
// the ckpt/s metric shows.
func BenchmarkLogBandwidthIdle(b *testing.B) {
	benchLogBandwidth(b, "ftvm.workload=sleep ftvm.seconds=100000", vmwareIdleMaxMbps, false)
}

func BenchmarkLogBandwidthCPU(b *testing.B) {
	benchLogBandwidth(b, "ftvm.workload=cpu ftvm.seconds=100000", vmwareLoadMaxMbps, false)
}

// BenchmarkKickAfter runs the kv guest's pair from power-on with the
// recording watchdog's bound (vm.Config.RecordingKickAfter) at 5, 20 and
// 50 ms, one after the other in one run: for each, the boot (primary start
// to the guest's ready line) and its checkpoints, then 20 s of mixed kv
// traffic (checkpoints per second, requests per second), and each as a
// ratio to the 5 ms pair's. Kicks come from the guest computing without
// exits while a timer is overdue; a longer bound lets more of that
// computing end in an exit of its own.
func BenchmarkKickAfter(b *testing.B) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	for range b.N {
		var base kickRun
		for _, after := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond} {
			r := kickAfterOnce(b, after)
			if after == 5*time.Millisecond {
				base = r
			}
			ms := fmt.Sprintf("%dms", after.Milliseconds())
			b.ReportMetric(r.boot.Seconds(), "boot-s@"+ms)
			b.ReportMetric(float64(r.bootCkpts), "boot-ckpts@"+ms)
			b.ReportMetric(r.w.ckptPerSec, "ckpt/s@"+ms)
			b.ReportMetric(r.reqPerSec, "req/s@"+ms)
			if after != 5*time.Millisecond {
				b.ReportMetric(r.boot.Seconds()/base.boot.Seconds(), "boot-x-5ms@"+ms)
				b.ReportMetric(float64(r.bootCkpts)/max(float64(base.bootCkpts), 1), "boot-ckpts-x-5ms@"+ms)
				b.ReportMetric(r.reqPerSec/max(base.reqPerSec, 1e-9), "req/s-x-5ms@"+ms)
			}
		}
	}
}

// kickRun is one pair's run in BenchmarkKickAfter.
type kickRun struct {
	boot      time.Duration
	bootCkpts uint64
	w         windowStats
	reqPerSec float64
}

// kickAfterOnce boots the kv guest's pair with the bound, then runs 20 s
// of mixed traffic against it.
func kickAfterOnce(b *testing.B, after time.Duration) kickRun {
	s := newPairSetup(b)
	s.inst.Append = "ftvm.workload=kv ftvm.port=7000"
	s.inst.RecordingKickAfter = after
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackup(b, bctx, pairLog)
	var r kickRun
	start := time.Now()
	pr := s.startPrimary(b, replication.PrimaryConfig{}) // returns once the guest is ready
	r.boot = time.Since(start)
	r.bootCkpts = pr.p.Status().Recorder.Checkpoints
	conn, rd := guesttest.DialKV(b, s.fwd)
	defer conn.Close()
	cl := &kvClient{conn: conn, r: rd, puts: map[string]string{}}
	began := time.Now()
	r.w = window(pr.p, 20*time.Second, cl.mixedUntil(b))
	r.reqPerSec = float64(cl.ops) / time.Since(began).Seconds()
	pr.cancel()
	if pd := pr.wait(); pd.err != nil {
		b.Fatalf("primary: %v", pd.err)
	}
	if res := <-backup; res.err != nil {
		b.Fatalf("backup: %v", res.err)
	}
	if cl.ops == 0 {
		b.Fatal("no kv request was answered")
	}
	b.Logf("kick after %v: boot %v with %d checkpoints; traffic: %.2f checkpoints/s, log %.2f Mbit/s (%.2f checkpoints), %.1f requests/s",
		after, r.boot.Round(time.Millisecond), r.bootCkpts, r.w.ckptPerSec, r.w.mbps, r.w.ckptMbps, r.reqPerSec)
	return r
}

func BenchmarkLogBandwidthNetwork(b *testing.B) {
	benchLogBandwidth(b, "ftvm.workload=kv ftvm.port=7000", vmwareLoadMaxMbps, true)
}

func benchLogBandwidth(b *testing.B, workload string, vmware float64, traffic bool) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	s := newPairSetup(b)
	s.inst.Append = workload
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackup(b, bctx, pairLog)
	pr := s.startPrimary(b, replication.PrimaryConfig{})
	var during func(stop <-chan struct{})
	requests := 0
	if traffic {
		conn, r := guesttest.DialKV(b, s.fwd)
		defer conn.Close()
		cl := &kvClient{conn: conn, r: r, puts: map[string]string{}}
		during = func(stop <-chan struct{}) {
			for i := 0; ; i++ {
				select {
				case <-stop:
					requests = cl.ops
					return
				default:
				}
				cl.mixed(b, i)
			}
		}
	}
	b.ResetTimer()
	w := window(pr.p, 20*time.Second, during)
	b.StopTimer()
	pr.cancel()
	pd := pr.wait()
	b.ReportMetric(w.mbps, "log-Mbit/s")
	b.ReportMetric(w.mbps-w.ckptMbps, "inputs-Mbit/s")
	b.ReportMetric(w.mbps/vmware, "x-vmware-max")
	b.ReportMetric((w.mbps-w.ckptMbps)/vmware, "inputs-x-vmware-max")
	b.ReportMetric(w.ckptPerSec, "ckpt/s")
	b.ReportMetric(float64(w.maxLag.Milliseconds()), "max-lag-ms")
	b.ReportMetric(float64(w.maxLagEntries), "max-lag-entries")
	if traffic {
		b.ReportMetric(float64(requests)/20, "req/s")
	}
	if pd.err != nil {
		b.Fatalf("primary: %v", pd.err)
	}
	if r := <-backup; r.err != nil {
		b.Fatalf("backup: %v", r.err)
	}
}

// BenchmarkKVWithFT runs the standard kv load against the guest alone and
// against the same guest as the primary of a pair, and reports both and
// their ratios: request latency p50/p99, bulk throughput, durable PUT rate,
// and the backup's lag during the load.
func BenchmarkKVWithFT(b *testing.B) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	s := newPairSetup(b)

	// Alone: the same machine, no replication.
	var alone guesttest.KVLoad
	runAlone(b, s, func(b *testing.B, s *pairSetup, _ *guesttest.Console, _ <-chan error) suiteWork {
		conn, r := guesttest.DialKV(b, s.fwd)
		defer conn.Close()
		alone = guesttest.RunKVLoad(b, conn, r)
		return suiteWork{}
	})

	// As a primary.
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackup(b, bctx, pairLog)
	pr := s.startPrimary(b, replication.PrimaryConfig{})
	conn, r := guesttest.DialKV(b, s.fwd)
	var ft guesttest.KVLoad
	b.ResetTimer()
	w := window(pr.p, 0, func(<-chan struct{}) { ft = guesttest.RunKVLoad(b, conn, r) })
	b.StopTimer()
	conn.Close()
	pr.cancel()
	if pd := pr.wait(); pd.err != nil {
		b.Fatalf("primary: %v", pd.err)
	}
	if r := <-backup; r.err != nil {
		b.Fatalf("backup: %v", r.err)
	}
	b.ReportMetric(float64(alone.P50.Microseconds()), "alone-p50-us")
	b.ReportMetric(float64(ft.P50.Microseconds()), "ft-p50-us")
	b.ReportMetric(float64(ft.P50)/float64(alone.P50), "p50-ratio")
	b.ReportMetric(float64(ft.P99)/float64(alone.P99), "p99-ratio")
	b.ReportMetric(alone.MBps, "alone-MB/s")
	b.ReportMetric(ft.MBps, "ft-MB/s")
	b.ReportMetric(alone.MBps/ft.MBps, "tput-slowdown")
	b.ReportMetric(alone.Puts, "alone-puts/s")
	b.ReportMetric(ft.Puts, "ft-puts/s")
	b.ReportMetric(alone.Puts/ft.Puts, "put-slowdown")
	b.ReportMetric(float64(w.maxLag.Milliseconds()), "max-lag-ms")
	b.ReportMetric(float64(w.maxLagEntries), "max-lag-entries")
	b.Logf("alone: %+v; as primary: %+v", alone, ft)
}

// failoverTrial is one measured failover: when the primary was stopped,
// the backup's lag at that moment, and the client's pause, from the signal
// to the first answer after it.
type failoverTrial struct {
	signalled time.Time
	lagExits  uint64
	lagTime   time.Duration
	// lagP50, lagP99: the backup's lag over the minute before the signal.
	lagP50, lagP99 time.Duration
	pause          time.Duration
}

// runFailoverTrial boots a fresh pair (backup here, primary in a child
// process), drives ECHO/PUT/GET traffic on one connection, stops the
// primary with sig after a few seconds (SIGKILL: a crash, seen at once;
// SIGSTOP: silence, seen after the peer timeout), and keeps the traffic
// going until 20 more answers came. It returns the pause the client saw
// and leaves the backup live; stop it with the returned function.
func runFailoverTrial(b *testing.B, s *pairSetup, sig syscall.Signal) (*failoverTrial, func() backupRun) {
	bctx, bcancel := context.WithCancel(context.Background())
	var status atomic.Pointer[func() replication.BackupStatus]
	log := pairLog
	var arb arbiter.Arbiter
	var arbDir, srvSock string
	if sig == syscall.SIGSTOP {
		// Silence is found after the peer timeout: measure it with the
		// one users get by default (ftctl's --peer-timeout). A paused
		// primary keeps its disks locked, so the backup can take them
		// over only from a storage server that fences the old one.
		log.Timeout = 3 * time.Second
		srv := startStorageServer(b, s.storeDir)
		client, err := server.Dial(context.Background(), "unix", srv.sock)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { client.Close() })
		arb, srvSock = client, srv.sock
		s.inst.StorageServer, s.inst.Pair = srv.sock, "kv"
	} else {
		arbDir = filepath.Join(b.TempDir(), "arbiter")
		dir, err := arbiter.OpenDir(arbDir)
		if err != nil {
			b.Fatal(err)
		}
		arb = dir
	}
	backup := s.startBackupWith(b, bctx, replication.BackupConfig{Log: log, Arbiter: arb, Pair: "kv",
		Running: func(f func() replication.BackupStatus) { status.Store(&f) }})
	cmd, _ := s.startPrimaryProcess(b, arbDir, srvSock)
	c := dialKVClient(b, s.fwd)
	defer c.conn.Close()
	tr := &failoverTrial{}
	var signalled atomic.Bool
	time.AfterFunc(3*time.Second, func() {
		if f := status.Load(); f != nil {
			st := (*f)()
			tr.lagExits, tr.lagTime = st.LogExit-min(st.LogExit, st.Exit), st.Log.LagTime
			tr.lagP50, tr.lagP99 = st.Log.LagP50, st.Log.LagP99
		}
		tr.signalled = time.Now()
		cmd.Process.Signal(sig)
		signalled.Store(true)
	})
	after := 0
	for i := 0; after < 20; i++ {
		c.mixed(b, i)
		if signalled.Load() {
			if after == 0 {
				tr.pause = time.Since(tr.signalled)
			}
			after++
		}
	}
	c.readBack(b)
	return tr, func() backupRun {
		bcancel()
		res := <-backup
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
		return res
	}
}

// BenchmarkFailoverKill and BenchmarkFailoverSilence measure failovers
// (-benchtime Nx: N trials, each a fresh pair) and, once, the alternative
// without ftvm: the VM dies and a fresh one boots on the same disk; the
// client reconnects. They report p50/p99/max of the client's pause and of
// each step of the backup's timeline (detection after the signal, drain,
// claim, go-live), the backup's lag when the primary stopped, the
// restart's pause and its ratio to the failover's.
func BenchmarkFailoverKill(b *testing.B)    { benchFailover(b, syscall.SIGKILL) }
func BenchmarkFailoverSilence(b *testing.B) { benchFailover(b, syscall.SIGSTOP) }

func benchFailover(b *testing.B, sig syscall.Signal) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	steps := map[string][]time.Duration{}
	add := func(name string, d time.Duration) { steps[name] = append(steps[name], d) }
	var s *pairSetup
	for i := 0; i < b.N; i++ {
		s = newPairSetup(b)
		tr, stop := runFailoverTrial(b, s, sig)
		res := stop()
		if res.err != nil || !res.res.WentLive {
			b.Fatalf("trial %d: backup %v (went live: %v)", i, res.err, res.res != nil && res.res.WentLive)
		}
		tl := res.res.Failover
		b.Logf("trial %d: lag at the signal %d exits (%v; the minute before: p50 %v p99 %v); client pause %v; detected %v after the signal; backup: %v",
			i, tr.lagExits, tr.lagTime.Round(time.Millisecond), tr.lagP50.Round(time.Millisecond), tr.lagP99.Round(time.Millisecond), tr.pause.Round(time.Millisecond), tl.PrimaryLost.Sub(tr.signalled).Round(time.Millisecond), tl)
		add("pause", tr.pause)
		add("detect", tl.PrimaryLost.Sub(tr.signalled))
		add("drain", tl.Drained)
		add("claim", tl.Claimed-tl.Drained)
		add("golive", tl.Live-tl.Claimed)
		add("lag", tr.lagTime)
		add("lag-minute-p99", tr.lagP99)
	}
	restart := restartPause(b, s)
	b.Logf("restart without ftvm: first answer %v after the VM died", restart.Round(time.Millisecond))
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	// The same figures as a table in the log: the metrics line can come
	// out torn by the log lines of VMs and switches shutting down.
	var table strings.Builder
	fmt.Fprintf(&table, "%-16s %10s %10s %10s\n", "step", "p50", "p99", "max")
	for _, name := range []string{"pause", "detect", "drain", "claim", "golive", "lag", "lag-minute-p99"} {
		p50, p99, mx := quantiles(steps[name])
		b.ReportMetric(ms(p50), name+"-p50-ms")
		b.ReportMetric(ms(p99), name+"-p99-ms")
		b.ReportMetric(ms(mx), name+"-max-ms")
		fmt.Fprintf(&table, "%-16s %10v %10v %10v\n", name, p50.Round(time.Millisecond), p99.Round(time.Millisecond), mx.Round(time.Millisecond))
	}
	p50, p99, _ := quantiles(steps["pause"])
	fmt.Fprintf(&table, "%-16s %10v (restart/failover pause p50: %.1fx)", "restart", restart.Round(time.Millisecond), float64(restart)/float64(p50))
	b.Logf("%v, %d trials:\n%s", sig, b.N, table.String())
	b.ReportMetric(ms(restart), "restart-pause-ms")
	b.ReportMetric(float64(restart)/float64(p50), "restart/failover-p50")
	b.ReportMetric(float64(restart)/float64(p99), "restart/failover-p99")
	b.Logf("%d trials, every one live with no client error; client pause histogram:\n%s", b.N, histogram(steps["pause"]))
	b.Logf("host: %s", hostKind())
}

// histogram draws the durations in doubling buckets, a bar of # each.
func histogram(ds []time.Duration) string {
	var sb strings.Builder
	lo := time.Duration(0)
	for hi := 125 * time.Millisecond; ; hi *= 2 {
		n := 0
		for _, d := range ds {
			if d >= lo && (d < hi || hi >= 16*time.Second) {
				n++
			}
		}
		label := fmt.Sprintf("%v-%v", lo, hi)
		if hi >= 16*time.Second {
			label = fmt.Sprintf(">=%v", lo)
		}
		fmt.Fprintf(&sb, "  %-14s %4d %s\n", label, n, strings.Repeat("#", n))
		if hi >= 16*time.Second {
			return sb.String()
		}
		lo = hi
	}
}

// restartPause is the alternative without ftvm: the guest's VM is gone, a
// fresh VM boots on the same disk and network, and the client reconnects;
// the pause runs from the death to the first answer.
func restartPause(b *testing.B, s *pairSetup) time.Duration {
	died := time.Now() // the previous trial's VMs are already stopped
	cfg := s.inst
	cfg.Console = guesttest.NewConsole()
	if cfg.StorageServer != "" {
		// The disks are fenced at the record's generation: a restarted
		// VM takes the next one, as any new writer must.
		client, err := server.Dial(context.Background(), "unix", cfg.StorageServer)
		if err != nil {
			b.Fatal(err)
		}
		defer client.Close()
		rec, err := client.Read(context.Background(), cfg.Pair)
		if err == nil {
			rec, err = client.Claim(context.Background(), cfg.Pair, "restart", rec.Generation)
		}
		if err != nil {
			b.Fatalf("claim the record for the restart: %v", err)
		}
		cfg.Generation = rec.Generation
	}
	inst, err := instance.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer inst.Close()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { _, err := inst.Run(ctx); stopped <- err }()
	defer func() { cancel(); <-stopped }()
	c := dialKVClient(b, s.fwd)
	defer c.conn.Close()
	c.do(b, "ECHO restarted", "restarted", true)
	return time.Since(died)
}

// quantiles returns the median, the 99th percentile and the maximum.
func quantiles(ds []time.Duration) (p50, p99, mx time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return at(0.5), at(0.99), s[len(s)-1]
}

// hostKind names where the VMs of a benchmark ran: the figures mean
// little without it.
func hostKind() string {
	var u unix.Utsname
	release := "unknown kernel"
	if err := unix.Uname(&u); err == nil {
		release = "kernel " + unix.ByteSliceToString(u.Release[:])
	}
	if kvmhost.Inside() {
		return fmt.Sprintf("nested KVM host under QEMU's software CPU (%s, %d CPUs)", release, runtime.NumCPU())
	}
	return fmt.Sprintf("KVM on this machine (%s, %d CPUs)", release, runtime.NumCPU())
}
