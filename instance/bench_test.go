package instance_test

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/ftvm/ftvm/images/workloads/kv"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

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
	host := guesttest.RunKVLoad(b, hc, bufio.NewReader(hc))
	hc.Close()

	// The guest.
	fwd := guesttest.FreeAddr(b)
	sock := guesttest.StartSwitch(b, network.SwitchConfig{Forwards: []network.Forward{{Host: fwd, Guest: "192.168.127.2:7000"}}})
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
	conn, r := guesttest.DialKV(b, fwd)
	b.ResetTimer()
	guest := guesttest.RunKVLoad(b, conn, r)
	b.StopTimer()
	conn.Close()
	g.stop(b)
	vst := g.inst.VM.Stats()

	b.ReportMetric(float64(guest.P50.Microseconds()), "vm-rtt-p50-us")
	b.ReportMetric(float64(guest.P99.Microseconds()), "vm-rtt-p99-us")
	b.ReportMetric(float64(host.P50.Microseconds()), "host-rtt-p50-us")
	b.ReportMetric(float64(guest.P50)/float64(host.P50), "rtt-ratio")
	b.ReportMetric(guest.MBps, "vm-MB/s")
	b.ReportMetric(host.MBps, "host-MB/s")
	b.ReportMetric(host.MBps/guest.MBps, "tput-ratio")
	b.ReportMetric(guest.Puts, "vm-puts/s")
	b.ReportMetric(host.Puts, "host-puts/s")
	b.ReportMetric(host.Puts/guest.Puts, "put-ratio")
	b.ReportMetric(float64(vst.Kicks), "vm-kicks")
	b.ReportMetric(float64(vst.HaltedTime.Milliseconds()), "vm-halted-ms")
}
