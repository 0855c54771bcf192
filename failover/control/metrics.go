package control

import "github.com/prometheus/client_golang/prometheus"

// collector turns one Status, read at scrape time, into metrics: the
// numbers are the status's own, so /metrics and /status never disagree
// about what they count.
type collector struct{ src Source }

func desc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc("ftvm_"+name, help, append([]string{"role"}, extra...), nil)
}

var (
	descPhase       = desc("phase", "1 for the side's current phase (protected, unprotected, backup-lost, replaying, failing-over, live, halted, stopped).", "phase")
	descGeneration  = desc("generation", "The arbiter record's generation this side last saw or won.")
	descLagSeconds  = desc("replay_lag_seconds", "Age of the oldest log entry the backup has not replayed.")
	descLagEntries  = desc("replay_lag_entries", "Log entries the backup has not replayed.")
	descLagQuantile = desc("replay_lag_quantile_seconds", "The replay lag's median and 99th percentile over the last minute (sampled every 100 ms).", "quantile")
	descHeld        = desc("held_outputs", "Outputs (frames, disk writes, console) the primary holds until the backup acknowledges their log.")
	descHeldBytes   = desc("held_bytes", "Bytes of the held outputs.")
	descLogEntries  = desc("log_entries_total", "Log entries sent (primary) or received (backup).")
	descLogBytes    = desc("log_bytes_per_second", "Log channel throughput over the last second.")
	descDigests     = desc("digests_total", "Register and memory digests logged (primary) or checked equal (backup).")
	descFailoverMS  = desc("failover_step_milliseconds", "The last go-live's steps, from the primary found lost: drained, claimed, live.", "step")
	descFailoverGen = desc("failover_generation", "The generation the backup won going live.")
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPhase, descGeneration, descLagSeconds, descLagEntries, descLagQuantile, descHeld, descHeldBytes,
		descLogEntries, descLogBytes, descDigests, descFailoverMS, descFailoverGen} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Status()
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{s.Role}, extra...)...)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, s.Role)
	}
	gauge(descPhase, 1, s.Phase)
	gauge(descGeneration, float64(s.Generation))
	gauge(descLagSeconds, s.LagSeconds)
	gauge(descLagEntries, float64(s.LagEntries))
	gauge(descLagQuantile, s.LagP50Seconds, "0.5")
	gauge(descLagQuantile, s.LagP99Seconds, "0.99")
	gauge(descHeld, float64(s.HeldOutputs))
	gauge(descHeldBytes, float64(s.HeldBytes))
	counter(descLogEntries, float64(s.LogEntries))
	gauge(descLogBytes, s.LogBytesPerSecond)
	counter(descDigests, float64(s.Digests))
	if f := s.Failover; f != nil {
		gauge(descFailoverMS, f.DrainedMS, "drained")
		gauge(descFailoverMS, f.ClaimedMS, "claimed")
		gauge(descFailoverMS, f.LiveMS, "live")
		gauge(descFailoverGen, float64(f.Generation))
	}
}
