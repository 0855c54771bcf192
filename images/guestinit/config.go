package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ftvm/ftvm/images/workloads/mapreduce"
)

// Config is what the kernel command line asks of the guest.
type Config struct {
	// Workload names the entry of the workload registry to run
	// (ftvm.workload=NAME, default "none").
	Workload string
	// Seconds is how long time-based workloads run (ftvm.seconds=N).
	Seconds int
	// Params holds every ftvm.* parameter, for workloads with their own options.
	Params map[string]string
	// Net is how PID 1 configures eth0 (ftvm.ip, ftvm.gw, ftvm.dns).
	Net NetConfig
	// Disk is what PID 1 mounts (ftvm.disk, ftvm.fs).
	Disk DiskConfig
	// Port is the TCP port of server workloads (ftvm.port, default 7000).
	Port int
	// Raft is the raftkv workload's replica (ftvm.id, ftvm.peers, ...).
	Raft RaftConfig
	// MapReduce is the job of the mapreduce-coordinator and
	// mapreduce-worker workloads (ftvm.app, ftvm.coordinator, ...).
	MapReduce MapReduceConfig
	// DataDir is where workloads keep durable data: the mounted disk, or
	// "" when there is none. PID 1 passes it to the workload process in
	// $FTVM_GUEST_DATADIR; it is not a command line parameter.
	DataDir string
}

// Network modes of NetConfig.
const (
	NetNone   = ""       // no ftvm.ip: only lo is brought up
	NetStatic = "static" // ftvm.ip=ADDR/LEN
	NetDHCP   = "dhcp"   // ftvm.ip=dhcp
)

// NetConfig is the configuration of eth0.
type NetConfig struct {
	Mode string
	// Addr is the static address with its prefix length (NetStatic).
	Addr netip.Prefix
	// Gateway is the default route's next hop; the zero Addr means no
	// default route (static), or the DHCP server's router option (dhcp).
	Gateway netip.Addr
	// DNS servers for /etc/resolv.conf; with DHCP, empty means the
	// servers the DHCP server offers.
	DNS []netip.Addr
}

// DiskConfig says which block device PID 1 mounts, and how.
type DiskConfig struct {
	// Device is the block device, "" for none (ftvm.disk=none).
	Device string
	// Explicit is true when ftvm.disk named the device: then a missing
	// device or a failed mount fails the boot instead of being skipped.
	Explicit bool
	// FSType is the filesystem type passed to mount(2).
	FSType string
	// MountPoint is where the filesystem goes.
	MountPoint string
}

// RaftConfig is one replica of the raftkv workload. Every replica gets
// the same peer list and its own index in it.
type RaftConfig struct {
	// ID is this replica's index in Peers (ftvm.id=N), -1 if not given.
	ID int
	// Peers are the addresses of all replicas, this one included
	// (ftvm.peers=IP:PORT,IP:PORT,...); the replica listens on the port
	// of its own entry, on every address of the guest.
	Peers []netip.AddrPort
	// ElectionTimeout overrides Raft's (ftvm.election-ms=N; 0 keeps
	// Raft's default), and the heartbeat, RPC and op timeouts scale with
	// it. Guests sharing a slow CPU need it longer, or a replica
	// descheduled for a while starts needless elections.
	ElectionTimeout time.Duration
	// SnapshotBytes is the size of the persisted Raft state at which the
	// service snapshots (ftvm.snapshot-bytes=N, 0 never). Raft rewrites
	// its whole state file on every save, so this bounds each write.
	SnapshotBytes int
}

// MapReduceConfig is a MapReduce job as its guests see it: the
// coordinator's job, and where a worker finds the coordinator.
type MapReduceConfig struct {
	// App is the application (ftvm.app=wordcount|index).
	App string
	// NReduce is the number of reduce tasks (ftvm.nreduce=N).
	NReduce int
	// Generated: the coordinator makes its inputs from Seed
	// (ftvm.seed=N, Splits of them: ftvm.splits=N) with
	// mapreduce.GenerateSplits, so a host can compute the expected output
	// without shipping files; otherwise it reads the files in the data
	// directory's input/ folder.
	Generated bool
	Seed      uint64
	Splits    int
	// TaskTimeout is how long the coordinator waits for a task before
	// giving it to another worker (ftvm.task-timeout-ms=N).
	TaskTimeout time.Duration
	// Workers: the coordinator hands out no task until this many workers
	// asked for one (ftvm.workers=N, default 0: start with the first).
	Workers int
	// Coordinator is where a worker finds the coordinator
	// (ftvm.coordinator=IP:PORT).
	Coordinator netip.AddrPort
}

// Defaults of the parameters above.
const (
	DefaultDisk          = "/dev/vda"
	DefaultFSType        = "ext4"
	DefaultMountPoint    = "/data"
	DefaultPort          = 7000
	DefaultSnapshotBytes = 64 << 10
	DefaultApp           = "wordcount"
	DefaultNReduce       = 3
	DefaultSplits        = 8
	DefaultTaskTimeout   = 10 * time.Second
)

// SplitCmdline splits a kernel command line into parameters the way the
// kernel does: on spaces, except inside double quotes, which are removed
// (param="a b" is one parameter with value a b).
func SplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ParseCmdline extracts the ftvm.* parameters. Other parameters belong to
// the kernel and are ignored. A later ftvm.X overrides an earlier one, as
// for kernel parameters, so a caller can append to the default cmdline.
func ParseCmdline(cmdline string, known map[string]Workload) (Config, error) {
	cfg := Config{Workload: "none", Params: map[string]string{}}
	for _, p := range SplitCmdline(cmdline) {
		key, val, _ := strings.Cut(p, "=")
		if name, ok := strings.CutPrefix(key, "ftvm."); ok && name != "" {
			cfg.Params[name] = val
		}
	}
	var errs []error
	if w, ok := cfg.Params["workload"]; ok {
		cfg.Workload = w
	}
	if _, ok := known[cfg.Workload]; !ok {
		errs = append(errs, fmt.Errorf("ftvm.workload=%q is not a known workload (have: %s)", cfg.Workload, strings.Join(workloadNames(known), ", ")))
	}
	if s, ok := cfg.Params["seconds"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("ftvm.seconds=%q is not a non-negative integer", s))
		}
		cfg.Seconds = n
	}
	var err error
	if cfg.Net, err = parseNet(cfg.Params); err != nil {
		errs = append(errs, err)
	}
	if cfg.Disk, err = parseDisk(cfg.Params); err != nil {
		errs = append(errs, err)
	}
	if cfg.Port, err = parsePort(cfg.Params); err != nil {
		errs = append(errs, err)
	}
	if cfg.Raft, err = parseRaft(cfg.Params, cfg.Workload == workloadRaftKV); err != nil {
		errs = append(errs, err)
	}
	if cfg.MapReduce, err = parseMapReduce(cfg.Params, cfg.Workload == workloadMRWorker); err != nil {
		errs = append(errs, err)
	}
	return cfg, errors.Join(errs...)
}

// parseNet reads ftvm.ip (ADDR/LEN or dhcp), ftvm.gw and ftvm.dns (a
// comma-separated list). All addresses are IPv4: the guest network is
// gvisor-tap-vsock's 192.168.127.0/24 or a bridge configured the same way.
func parseNet(p map[string]string) (NetConfig, error) {
	var nc NetConfig
	var errs []error
	switch ip, ok := p["ip"]; {
	case !ok || ip == "" || ip == "none":
		nc.Mode = NetNone
	case ip == "dhcp":
		nc.Mode = NetDHCP
	default:
		pfx, err := netip.ParsePrefix(ip)
		if err != nil || !pfx.Addr().Is4() || pfx.Bits() == 0 || (pfx.Bits() < 31 && pfx.Addr() == pfx.Masked().Addr()) {
			errs = append(errs, fmt.Errorf("ftvm.ip=%q is not dhcp or an IPv4 host address with a prefix length, like 192.168.127.2/24", ip))
		}
		nc.Mode, nc.Addr = NetStatic, pfx
	}
	if gw, ok := p["gw"]; ok && gw != "" {
		a, err := netip.ParseAddr(gw)
		switch {
		case err != nil || !a.Is4():
			errs = append(errs, fmt.Errorf("ftvm.gw=%q is not an IPv4 address", gw))
		case nc.Mode == NetNone:
			errs = append(errs, fmt.Errorf("ftvm.gw=%s needs ftvm.ip", gw))
		case nc.Mode == NetStatic && nc.Addr.IsValid() && !nc.Addr.Masked().Contains(a):
			// The kernel would refuse the route (no on-link next hop);
			// saying so here names the parameter to fix.
			errs = append(errs, fmt.Errorf("ftvm.gw=%s is outside the subnet of ftvm.ip=%s", gw, nc.Addr))
		}
		nc.Gateway = a
	}
	if dns, ok := p["dns"]; ok && dns != "" {
		for _, s := range strings.Split(dns, ",") {
			a, err := netip.ParseAddr(s)
			if err != nil || !a.Is4() {
				errs = append(errs, fmt.Errorf("ftvm.dns=%q: %q is not an IPv4 address", dns, s))
				continue
			}
			nc.DNS = append(nc.DNS, a)
		}
	}
	return nc, errors.Join(errs...)
}

// parseDisk reads ftvm.disk (a /dev path, or none) and ftvm.fs.
func parseDisk(p map[string]string) (DiskConfig, error) {
	dc := DiskConfig{Device: DefaultDisk, FSType: DefaultFSType, MountPoint: DefaultMountPoint}
	var errs []error
	if d, ok := p["disk"]; ok {
		switch {
		case d == "none":
			dc.Device = ""
		case strings.HasPrefix(d, "/dev/") && len(d) > len("/dev/"):
			dc.Device, dc.Explicit = d, true
		default:
			errs = append(errs, fmt.Errorf("ftvm.disk=%q is not a /dev path or none", d))
		}
	}
	if fs, ok := p["fs"]; ok {
		if fs == "" || strings.ContainsAny(fs, "/ ,") {
			errs = append(errs, fmt.Errorf("ftvm.fs=%q is not a filesystem type", fs))
		}
		dc.FSType = fs
	}
	return dc, errors.Join(errs...)
}

func parsePort(p map[string]string) (int, error) {
	s, ok := p["port"]
	if !ok {
		return DefaultPort, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("ftvm.port=%q is not a TCP port (0-65535, 0 for any)", s)
	}
	return n, nil
}

// intParam reads the integer parameter name within [lo, hi], or def when
// it is absent.
func intParam(p map[string]string, name string, lo, hi, def int) (int, error) {
	s, ok := p[name]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return def, fmt.Errorf("ftvm.%s=%q is not an integer from %d to %d", name, s, lo, hi)
	}
	return n, nil
}

// addrPortParam reads an IPv4:PORT parameter; the zero AddrPort if absent.
func addrPortParam(name, s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !ap.Addr().Is4() || ap.Port() == 0 || ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("ftvm.%s: %q is not an IPv4 address with a port, like 192.168.127.11:7000", name, s)
	}
	return ap, nil
}

// parseRaft reads ftvm.id, ftvm.peers, ftvm.election-ms and
// ftvm.snapshot-bytes; required says the workload needs a replica (the
// id and peers must be there).
func parseRaft(p map[string]string, required bool) (RaftConfig, error) {
	var rc RaftConfig
	var errs []error
	if s, ok := p["peers"]; ok {
		seen := map[netip.AddrPort]bool{}
		for _, a := range strings.Split(s, ",") {
			ap, err := addrPortParam("peers", a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if seen[ap] {
				errs = append(errs, fmt.Errorf("ftvm.peers: %s is listed twice", ap))
			}
			seen[ap] = true
			rc.Peers = append(rc.Peers, ap)
		}
	}
	id, err := intParam(p, "id", 0, 1<<16, -1)
	if err != nil {
		errs = append(errs, err)
	}
	rc.ID = id
	switch {
	case len(errs) > 0:
	case required && len(rc.Peers) == 0:
		errs = append(errs, fmt.Errorf("ftvm.workload=%s needs ftvm.peers=IP:PORT,IP:PORT,... (every replica, this one included)", workloadRaftKV))
	case required && id < 0:
		errs = append(errs, fmt.Errorf("ftvm.workload=%s needs ftvm.id=N (this replica's index in ftvm.peers)", workloadRaftKV))
	case id >= 0 && len(rc.Peers) > 0 && id >= len(rc.Peers):
		errs = append(errs, fmt.Errorf("ftvm.id=%d is not an index of the %d ftvm.peers", id, len(rc.Peers)))
	}
	ms, err := intParam(p, "election-ms", 0, 60_000, 0)
	if err != nil {
		errs = append(errs, err)
	}
	rc.ElectionTimeout = time.Duration(ms) * time.Millisecond
	if rc.SnapshotBytes, err = intParam(p, "snapshot-bytes", 0, 1<<30, DefaultSnapshotBytes); err != nil {
		errs = append(errs, err)
	}
	return rc, errors.Join(errs...)
}

// parseMapReduce reads ftvm.app, ftvm.nreduce, ftvm.seed, ftvm.splits,
// ftvm.task-timeout-ms, ftvm.workers and ftvm.coordinator; isWorker says the workload
// is a worker, which needs the coordinator's address.
func parseMapReduce(p map[string]string, isWorker bool) (MapReduceConfig, error) {
	mc := MapReduceConfig{App: DefaultApp}
	var errs []error
	if app, ok := p["app"]; ok {
		if _, err := mapreduce.AppByName(app); err != nil {
			errs = append(errs, fmt.Errorf("ftvm.app: %w", err))
		}
		mc.App = app
	}
	var err error
	if mc.NReduce, err = intParam(p, "nreduce", 1, 1000, DefaultNReduce); err != nil {
		errs = append(errs, err)
	}
	if s, ok := p["seed"]; ok {
		if mc.Seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			errs = append(errs, fmt.Errorf("ftvm.seed=%q is not a non-negative integer", s))
		}
		mc.Generated = true
	}
	if mc.Splits, err = intParam(p, "splits", 1, 10_000, DefaultSplits); err != nil {
		errs = append(errs, err)
	}
	ms, err := intParam(p, "task-timeout-ms", 1, 3_600_000, int(DefaultTaskTimeout/time.Millisecond))
	if err != nil {
		errs = append(errs, err)
	}
	mc.TaskTimeout = time.Duration(ms) * time.Millisecond
	if mc.Workers, err = intParam(p, "workers", 0, 1000, 0); err != nil {
		errs = append(errs, err)
	}
	if s, ok := p["coordinator"]; ok {
		if mc.Coordinator, err = addrPortParam("coordinator", s); err != nil {
			errs = append(errs, err)
		}
	} else if isWorker {
		errs = append(errs, fmt.Errorf("ftvm.workload=%s needs ftvm.coordinator=IP:PORT", workloadMRWorker))
	}
	return mc, errors.Join(errs...)
}
