package replication_test

import (
	"context"
	"testing"
	"time"

	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
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
	plain := s.inst
	plain.Console = guesttest.NewConsole()
	inst, err := instance.New(context.Background(), plain)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { _, err := inst.Run(ctx); stopped <- err }()
	plain.Console.(*guesttest.Console).WaitFor(b, "ftvm-guest ready", stopped, 5*time.Minute)
	conn, r := guesttest.DialKV(b, s.fwd)
	alone := guesttest.RunKVLoad(b, conn, r)
	conn.Close()
	cancel()
	<-stopped
	inst.Close()

	// As a primary.
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackup(b, bctx, pairLog)
	pr := s.startPrimary(b, replication.PrimaryConfig{})
	conn, r = guesttest.DialKV(b, s.fwd)
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
