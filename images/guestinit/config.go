package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
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

// Defaults of the parameters above.
const (
	DefaultDisk       = "/dev/vda"
	DefaultFSType     = "ext4"
	DefaultMountPoint = "/data"
	DefaultPort       = 7000
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
