package instance_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/kv"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// kvLoad is what both sides of the comparison run: request latency (ECHO
// round trips), bulk throughput (16 KiB ECHO lines) and durable write rate
// (PUT, each fsync'd before its OK).
type kvLoad struct {
	p50, p99 time.Duration
	mbps     float64
	puts     float64
}

func runKVLoad(tb testing.TB, conn net.Conn, r *bufio.Reader) kvLoad {
	tb.Helper()
	var res kvLoad
	lat := make([]time.Duration, 0, 300)
	for i := 0; i < 300; i++ {
		start := time.Now()
		fmt.Fprintf(conn, "ECHO ping%d\n", i)
		if line, err := r.ReadString('\n'); err != nil || line != fmt.Sprintf("ping%d\n", i) {
			tb.Fatalf("ECHO: %q %v", line, err)
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res.p50, res.p99 = lat[len(lat)/2], lat[len(lat)*99/100]

	payload := strings.Repeat("x", 16<<10)
	const bulk = 40
	start := time.Now()
	for i := 0; i < bulk; i++ {
		fmt.Fprintf(conn, "ECHO %s\n", payload)
		if line, err := r.ReadString('\n'); err != nil || len(line) != len(payload)+1 {
			tb.Fatalf("bulk ECHO: %d bytes, %v", len(line), err)
		}
	}
	res.mbps = float64(2*bulk*len(payload)) / time.Since(start).Seconds() / 1e6

	const puts = 100
	start = time.Now()
	for i := 0; i < puts; i++ {
		fmt.Fprintf(conn, "PUT bench%d %d\n", i, i)
		if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
			tb.Fatalf("PUT: %q %v", line, err)
		}
	}
	res.puts = puts / time.Since(start).Seconds()
	return res
}

// BenchmarkKVThroughForward runs the kv workload in a guest (NIC on the
// embedded switch, port forward, ext4 disk) and the same server directly on
// the same host (loopback, a file on the host's filesystem), and reports both
// and their ratios. Run where it runs: the nested KVM host on machines
// without hardware virtualization, where every VM exit costs 80-200 µs.
func BenchmarkKVThroughForward(b *testing.B) {
	if kvmhost.RanElsewhere(b) {
		return
	}
	tmp := b.TempDir()

	// Baseline: no VM.
	store, _, err := kv.Open(filepath.Join(tmp, "kv.log"))
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = kv.NewServer(store).Serve(ctx, ln) }()
	hc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	host := runKVLoad(b, hc, bufio.NewReader(hc))
	hc.Close()

	// The guest.
	fwd := freeAddr(b)
	sock := startSwitch(b, network.SwitchConfig{Forwards: []network.Forward{{Host: fwd, Guest: "192.168.127.2:7000"}}})
	st, err := storage.Open(filepath.Join(tmp, "storage"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.CreateDisk(context.Background(), "data", 32<<20, storage.CreateOptions{Filesystem: storage.FilesystemExt4}); err != nil {
		b.Fatal(err)
	}
	g := startGuest(b, instance.Config{
		NetSocket: sock, IP: "192.168.127.2/24", Disks: []string{"data"}, StorageDir: st.Dir(),
		Append: "ftvm.workload=kv", MemoryMiB: 256,
	})
	conn, r := dialForward(b, fwd)
	b.ResetTimer()
	guest := runKVLoad(b, conn, r)
	b.StopTimer()
	conn.Close()
	g.stop(b)
	vst := g.inst.VM.Stats()

	b.ReportMetric(float64(guest.p50.Microseconds()), "vm-rtt-p50-us")
	b.ReportMetric(float64(guest.p99.Microseconds()), "vm-rtt-p99-us")
	b.ReportMetric(float64(host.p50.Microseconds()), "host-rtt-p50-us")
	b.ReportMetric(float64(guest.p50)/float64(host.p50), "rtt-ratio")
	b.ReportMetric(guest.mbps, "vm-MB/s")
	b.ReportMetric(host.mbps, "host-MB/s")
	b.ReportMetric(host.mbps/guest.mbps, "tput-ratio")
	b.ReportMetric(guest.puts, "vm-puts/s")
	b.ReportMetric(host.puts, "host-puts/s")
	b.ReportMetric(host.puts/guest.puts, "put-ratio")
	b.ReportMetric(float64(vst.Kicks), "vm-kicks")
	b.ReportMetric(float64(vst.HaltedTime.Milliseconds()), "vm-halted-ms")
}
