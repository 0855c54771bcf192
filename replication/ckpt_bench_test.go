package replication_test

import (
	"context"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// BenchmarkCheckpointBytes measures what checkpoints cost in the log of a kv
// guest's pair from power-on: the boot (where most kicks are) and 20 s of
// mixed ECHO/PUT traffic. It reports the whole log and its checkpoints in
// MB, what the same checkpoints would have cost as log Version 1 shipped
// them (every page's content, uncompressed) and the ratio, and how the
// pages travelled: content, hash only (the backup computed them; it
// verified each), zero.
func BenchmarkCheckpointBytes(b *testing.B) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	s := newPairSetup(b)
	s.inst.Append = "ftvm.workload=kv ftvm.port=7000"
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackup(b, bctx, pairLog)
	pr := s.startPrimary(b, replication.PrimaryConfig{})
	conn, r := guesttest.DialKV(b, s.fwd)
	defer conn.Close()
	cl := &kvClient{conn: conn, r: r, puts: map[string]string{}}
	b.ResetTimer()
	w := window(pr.p, 20*time.Second, cl.mixedUntil(b))
	b.StopTimer()
	st := pr.p.Status().Recorder
	pr.cancel()
	if pd := pr.wait(); pd.err != nil {
		b.Fatalf("primary: %v", pd.err)
	}
	res := <-backup
	if res.err != nil {
		b.Fatalf("backup: %v", res.err)
	}
	rs := res.res.Final.Replayer
	const mb = 1e6
	b.ReportMetric(float64(st.Bytes)/mb, "log-MB")
	b.ReportMetric(float64(st.CheckpointSize)/mb, "ckpt-MB")
	b.ReportMetric(float64(st.CheckpointRawSize)/mb, "ckpt-v1-MB")
	if st.CheckpointSize > 0 {
		b.ReportMetric(float64(st.CheckpointRawSize)/float64(st.CheckpointSize), "ckpt-x-smaller")
	}
	b.ReportMetric(float64(st.Checkpoints), "ckpts")
	b.ReportMetric(float64(st.CheckpointPagesSent), "pages-sent")
	b.ReportMetric(float64(st.CheckpointPagesHashed), "pages-hashed")
	b.ReportMetric(float64(st.CheckpointPagesZero), "pages-zero")
	if n := st.CheckpointPagesSent + st.CheckpointPagesHashed; n > 0 {
		b.ReportMetric(float64(st.CheckpointPagesHashed)/float64(n), "hashed-share")
	}
	b.ReportMetric(float64(rs.CheckpointPagesVerified), "backup-pages-verified")
	b.ReportMetric(float64(st.SyncReads), "sync-reads")
	b.ReportMetric(float64(st.SyncReadTime.Microseconds())/1e3, "sync-read-ms")
	if st.SyncReads > 0 {
		b.ReportMetric(float64(st.SyncReadTime.Microseconds())/float64(st.SyncReads), "us/sync-read")
	}
	b.ReportMetric(float64(st.CheckpointsWithoutSync), "ckpts-without-sync")
	b.ReportMetric(float64(cl.ops)/20, "req/s")
	b.ReportMetric(w.ckptMbps, "window-ckpt-Mbit/s")
	if rs.CheckpointPagesVerified != st.CheckpointPagesHashed || rs.Checkpoints != st.Checkpoints {
		b.Errorf("the backup loaded %d checkpoints and verified %d pages; the primary shipped %d with %d pages hashed",
			rs.Checkpoints, rs.CheckpointPagesVerified, st.Checkpoints, st.CheckpointPagesHashed)
	}
}

// mixedUntil is window's load: mixed requests until stop is closed.
func (c *kvClient) mixedUntil(tb testing.TB) func(stop <-chan struct{}) {
	return func(stop <-chan struct{}) {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c.mixed(tb, i)
		}
	}
}
