package main

import (
	"strings"
	"testing"

	"github.com/ftvm/ftvm/images/workloads/mapreduce"
)

// FuzzParseCmdline: the kernel command line reaches PID 1 from whoever
// started the VM. Parsing never panics, and a command line it accepts gives
// a configuration PID 1 can act on without checking again.
func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 ftvm.workload=kv ftvm.ip=192.168.127.2/24 ftvm.gw=192.168.127.1 ftvm.dns=1.1.1.1,8.8.8.8 ftvm.port=7000")
	f.Add(`ftvm.workload=none ftvm.ip=dhcp ftvm.disk=/dev/vdb ftvm.fs=xfs ftvm.seconds=10 ftvm.x="a b" ftvm.=1`)
	f.Add(`ftvm.ip=10.0.0.0/24 ftvm.gw=10.0.1.1 ftvm.disk=none ftvm.port=65536 ftvm.seconds=-1 "ftvm.fs= "`)
	f.Add("ftvm.workload=unknown ftvm.dns=::1 ftvm.ip=192.168.127.2 \"unterminated")
	f.Add("ftvm.workload=raftkv ftvm.ip=192.168.127.11/24 ftvm.id=0 ftvm.peers=192.168.127.11:7000,192.168.127.12:7000,192.168.127.13:7000 ftvm.election-ms=1000 ftvm.snapshot-bytes=0")
	f.Add("ftvm.workload=raftkv ftvm.id=3 ftvm.peers=192.168.127.11:7000,192.168.127.11:7000,[::1]:7000,1.2.3.4:0,0.0.0.0:1 ftvm.election-ms=-5")
	f.Add("ftvm.workload=mapreduce-coordinator ftvm.app=index ftvm.nreduce=4 ftvm.seed=18446744073709551615 ftvm.splits=12 ftvm.task-timeout-ms=5000 ftvm.workers=2")
	f.Add("ftvm.workload=mapreduce-worker ftvm.ip=dhcp ftvm.coordinator=192.168.127.20:7000 ftvm.port=7001 ftvm.app=grep ftvm.nreduce=0 ftvm.seed=-1")
	known := registry()
	f.Fuzz(func(t *testing.T, cmdline string) {
		cfg, err := ParseCmdline(cmdline, known)
		if err != nil {
			return
		}
		if _, ok := known[cfg.Workload]; !ok {
			t.Fatalf("accepted unknown workload %q", cfg.Workload)
		}
		if cfg.Seconds < 0 || cfg.Port < 0 || cfg.Port > 65535 {
			t.Fatalf("accepted seconds %d, port %d", cfg.Seconds, cfg.Port)
		}
		n := cfg.Net
		switch n.Mode {
		case NetNone, NetDHCP:
		case NetStatic:
			if !n.Addr.IsValid() || !n.Addr.Addr().Is4() {
				t.Fatalf("accepted static address %v", n.Addr)
			}
		default:
			t.Fatalf("network mode %q", n.Mode)
		}
		if n.Gateway.IsValid() && (!n.Gateway.Is4() || n.Mode == NetNone) {
			t.Fatalf("accepted gateway %v in mode %q", n.Gateway, n.Mode)
		}
		for _, a := range n.DNS {
			if !a.Is4() {
				t.Fatalf("accepted DNS server %v", a)
			}
		}
		switch r := cfg.Raft; {
		case cfg.Workload == workloadRaftKV && (r.ID < 0 || r.ID >= len(r.Peers)):
			t.Fatalf("accepted replica %d of %d peers", r.ID, len(r.Peers))
		case r.ElectionTimeout < 0 || r.SnapshotBytes < 0:
			t.Fatalf("accepted raft %+v", r)
		}
		for _, p := range cfg.Raft.Peers {
			if !p.Addr().Is4() || p.Port() == 0 {
				t.Fatalf("accepted peer %v", p)
			}
		}
		mr := cfg.MapReduce
		if _, err := mapreduce.AppByName(mr.App); err != nil || mr.NReduce < 1 || mr.Splits < 1 || mr.TaskTimeout <= 0 || mr.Workers < 0 {
			t.Fatalf("accepted mapreduce %+v", mr)
		}
		if cfg.Workload == workloadMRWorker && (!mr.Coordinator.Addr().Is4() || mr.Coordinator.Port() == 0) {
			t.Fatalf("accepted worker of coordinator %v", mr.Coordinator)
		}
		d := cfg.Disk
		if d.Device != "" && !strings.HasPrefix(d.Device, "/dev/") || d.FSType == "" || strings.ContainsAny(d.FSType, "/ ,") {
			t.Fatalf("accepted disk %+v", d)
		}
	})
}
