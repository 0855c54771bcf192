package main

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseNet(t *testing.T) {
	a := netip.MustParseAddr
	for in, want := range map[string]NetConfig{
		"":             {},
		"ftvm.ip=none": {},
		"ftvm.ip=192.168.127.2/24 ftvm.gw=192.168.127.1":         {Mode: NetStatic, Addr: netip.MustParsePrefix("192.168.127.2/24"), Gateway: a("192.168.127.1")},
		"ftvm.ip=10.0.0.5/32":                                    {Mode: NetStatic, Addr: netip.MustParsePrefix("10.0.0.5/32")},
		"ftvm.ip=dhcp":                                           {Mode: NetDHCP},
		"ftvm.ip=dhcp ftvm.gw=10.0.0.1 ftvm.dns=1.1.1.1,8.8.8.8": {Mode: NetDHCP, Gateway: a("10.0.0.1"), DNS: []netip.Addr{a("1.1.1.1"), a("8.8.8.8")}},
	} {
		cfg, err := ParseCmdline(in, registry())
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if !reflect.DeepEqual(cfg.Net, want) {
			t.Errorf("%q: %+v, want %+v", in, cfg.Net, want)
		}
	}
	for in, want := range map[string]string{
		"ftvm.ip=192.168.127.2":                        `ftvm.ip="192.168.127.2" is not dhcp or an IPv4 host address`,
		"ftvm.ip=192.168.127.0/24":                     `ftvm.ip="192.168.127.0/24"`,
		"ftvm.ip=fd00::2/64":                           `ftvm.ip="fd00::2/64"`,
		"ftvm.ip=DHCP":                                 `ftvm.ip="DHCP"`,
		"ftvm.gw=192.168.127.1":                        "ftvm.gw=192.168.127.1 needs ftvm.ip",
		"ftvm.ip=192.168.127.2/24 ftvm.gw=10.0.0.1":    "ftvm.gw=10.0.0.1 is outside the subnet of ftvm.ip=192.168.127.2/24",
		"ftvm.ip=192.168.127.2/24 ftvm.gw=x":           `ftvm.gw="x" is not an IPv4 address`,
		"ftvm.ip=192.168.127.2/24 ftvm.dns=1.1.1.1,,x": `ftvm.dns="1.1.1.1,,x": "" is not an IPv4 address`,
	} {
		if _, err := ParseCmdline(in, registry()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want error containing %q", in, err, want)
		}
	}
}

func TestParseDiskAndPort(t *testing.T) {
	for in, want := range map[string]DiskConfig{
		"":                                {Device: "/dev/vda", FSType: "ext4", MountPoint: "/data"},
		"ftvm.disk=/dev/vdb ftvm.fs=ext2": {Device: "/dev/vdb", Explicit: true, FSType: "ext2", MountPoint: "/data"},
		"ftvm.disk=/dev/vda":              {Device: "/dev/vda", Explicit: true, FSType: "ext4", MountPoint: "/data"},
		"ftvm.disk=none":                  {FSType: "ext4", MountPoint: "/data"},
	} {
		cfg, err := ParseCmdline(in, registry())
		if err != nil || cfg.Disk != want {
			t.Errorf("%q: %+v %v, want %+v", in, cfg.Disk, err, want)
		}
	}
	for in, want := range map[string]int{"": 7000, "ftvm.port=80": 80, "ftvm.port=0": 0} {
		if cfg, err := ParseCmdline(in, registry()); err != nil || cfg.Port != want {
			t.Errorf("%q: port %d %v, want %d", in, cfg.Port, err, want)
		}
	}
	for in, want := range map[string]string{
		"ftvm.disk=vda":   `ftvm.disk="vda" is not a /dev path or none`,
		"ftvm.disk=/dev/": `ftvm.disk="/dev/"`,
		"ftvm.fs=":        `ftvm.fs="" is not a filesystem type`,
		"ftvm.port=-1":    `ftvm.port="-1" is not a TCP port`,
		"ftvm.port=65536": `ftvm.port="65536"`,
		"ftvm.port=http":  `ftvm.port="http"`,
	} {
		if _, err := ParseCmdline(in, registry()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want error containing %q", in, err, want)
		}
	}
}

func TestParseRaft(t *testing.T) {
	peers := "ftvm.peers=192.168.127.11:7000,192.168.127.12:7000,192.168.127.13:7001"
	cfg, err := ParseCmdline("ftvm.workload=raftkv ftvm.id=2 ftvm.election-ms=900 "+peers, registry())
	if err != nil {
		t.Fatal(err)
	}
	want := RaftConfig{ID: 2, ElectionTimeout: 900 * time.Millisecond, SnapshotBytes: DefaultSnapshotBytes, Peers: []netip.AddrPort{
		netip.MustParseAddrPort("192.168.127.11:7000"), netip.MustParseAddrPort("192.168.127.12:7000"), netip.MustParseAddrPort("192.168.127.13:7001"),
	}}
	if !reflect.DeepEqual(cfg.Raft, want) {
		t.Fatalf("%+v, want %+v", cfg.Raft, want)
	}
	if cfg, err := ParseCmdline("ftvm.workload=kv", registry()); err != nil || cfg.Raft.ID != -1 || cfg.Raft.Peers != nil {
		t.Fatalf("no replica: %+v %v", cfg.Raft, err)
	}
	for in, want := range map[string]string{
		"ftvm.workload=raftkv ftvm.id=0":          "ftvm.workload=raftkv needs ftvm.peers=",
		"ftvm.workload=raftkv " + peers:           "ftvm.workload=raftkv needs ftvm.id=N",
		"ftvm.workload=raftkv ftvm.id=3 " + peers: "ftvm.id=3 is not an index of the 3 ftvm.peers",
		"ftvm.id=-1":                                               `ftvm.id="-1" is not an integer from 0`,
		"ftvm.peers=192.168.127.11":                                `ftvm.peers: "192.168.127.11" is not an IPv4 address with a port`,
		"ftvm.peers=192.168.127.11:0":                              `"192.168.127.11:0" is not`,
		"ftvm.peers=[fd00::1]:7000":                                `"[fd00::1]:7000" is not`,
		"ftvm.peers=0.0.0.0:7000":                                  `"0.0.0.0:7000" is not`,
		"ftvm.peers=192.168.127.11:7000,,192.168.127.12:7000":      `ftvm.peers: "" is not`,
		"ftvm.peers=192.168.127.11:7000,192.168.127.11:7000":       "ftvm.peers: 192.168.127.11:7000 is listed twice",
		"ftvm.election-ms=x":                                       `ftvm.election-ms="x" is not an integer from 0 to 60000`,
		"ftvm.snapshot-bytes=-1":                                   `ftvm.snapshot-bytes="-1"`,
		"ftvm.workload=raftkv ftvm.id=x ftvm.peers=192.168.127.11": `ftvm.id="x"`,
	} {
		if _, err := ParseCmdline(in, registry()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want error containing %q", in, err, want)
		}
	}
}

func TestParseMapReduce(t *testing.T) {
	cfg, err := ParseCmdline("ftvm.workload=mapreduce-coordinator", registry())
	if err != nil {
		t.Fatal(err)
	}
	if want := (MapReduceConfig{App: "wordcount", NReduce: 3, Splits: 8, TaskTimeout: 10 * time.Second}); cfg.MapReduce != want {
		t.Fatalf("defaults: %+v, want %+v", cfg.MapReduce, want)
	}
	cfg, err = ParseCmdline("ftvm.workload=mapreduce-coordinator ftvm.app=index ftvm.nreduce=5 ftvm.seed=42 ftvm.splits=12 ftvm.task-timeout-ms=2500 ftvm.workers=2", registry())
	if want := (MapReduceConfig{App: "index", NReduce: 5, Generated: true, Seed: 42, Splits: 12, TaskTimeout: 2500 * time.Millisecond, Workers: 2}); err != nil || cfg.MapReduce != want {
		t.Fatalf("%+v %v, want %+v", cfg.MapReduce, err, want)
	}
	cfg, err = ParseCmdline("ftvm.workload=mapreduce-worker ftvm.coordinator=192.168.127.20:7000", registry())
	if err != nil || cfg.MapReduce.Coordinator != netip.MustParseAddrPort("192.168.127.20:7000") {
		t.Fatalf("worker: %+v %v", cfg.MapReduce, err)
	}
	for in, want := range map[string]string{
		"ftvm.workload=mapreduce-worker":                "ftvm.workload=mapreduce-worker needs ftvm.coordinator=IP:PORT",
		"ftvm.coordinator=coordinator:7000":             `ftvm.coordinator: "coordinator:7000" is not an IPv4 address with a port`,
		"ftvm.app=grep":                                 `ftvm.app: unknown mapreduce application "grep"`,
		"ftvm.nreduce=0":                                `ftvm.nreduce="0" is not an integer from 1 to 1000`,
		"ftvm.seed=-1":                                  `ftvm.seed="-1" is not a non-negative integer`,
		"ftvm.seed=18446744073709551616":                `ftvm.seed="18446744073709551616"`,
		"ftvm.splits=0":                                 `ftvm.splits="0"`,
		"ftvm.task-timeout-ms=0":                        `ftvm.task-timeout-ms="0"`,
		"ftvm.workload=mapreduce-coordinator ftvm.app=": `ftvm.app: unknown mapreduce application ""`,
	} {
		if _, err := ParseCmdline(in, registry()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want error containing %q", in, err, want)
		}
	}
}
