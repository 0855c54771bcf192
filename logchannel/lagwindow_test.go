package logchannel

import (
	"testing"
	"time"
)

// TestLagWindow: one reading per 100 ms at most, the last minute kept,
// quantiles over what is kept.
func TestLagWindow(t *testing.T) {
	var w lagWindow
	if p50, p99 := w.quantiles(); p50 != 0 || p99 != 0 {
		t.Fatalf("empty window: %v %v", p50, p99)
	}
	at := int64(time.Second)
	w.sample(at, time.Second)
	w.sample(at+int64(50*time.Millisecond), time.Hour) // too soon: dropped
	if w.n != 1 {
		t.Fatalf("%d readings after one sample and one too soon", w.n)
	}
	// 100 readings of 1..100 ms: p50 51 ms, p99 100 ms.
	w = lagWindow{}
	for i := 1; i <= 100; i++ {
		w.sample(at+int64(i)*lagSampleEvery, time.Duration(i)*time.Millisecond)
	}
	if p50, p99 := w.quantiles(); p50 != 51*time.Millisecond || p99 != 100*time.Millisecond {
		t.Fatalf("1..100 ms: p50 %v p99 %v", p50, p99)
	}
	// A minute and more of readings: the oldest fall out.
	for i := 0; i < lagSamples; i++ {
		w.sample(at+int64(200+i)*lagSampleEvery, 7*time.Millisecond)
	}
	if p50, p99 := w.quantiles(); p50 != 7*time.Millisecond || p99 != 7*time.Millisecond || w.n != lagSamples {
		t.Fatalf("after a full minute of 7 ms: p50 %v p99 %v (%d readings)", p50, p99, w.n)
	}
	if n := testing.AllocsPerRun(100, func() { w.sample(at, time.Millisecond) }); n != 0 {
		t.Fatalf("sample allocates %v times", n)
	}
}
