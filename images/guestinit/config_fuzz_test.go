package main

import (
	"strings"
	"testing"
)

// FuzzParseCmdline: the kernel command line reaches PID 1 from whoever
// started the VM. Parsing never panics, and a command line it accepts gives
// a configuration PID 1 can act on without checking again.
func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 ftvm.workload=kv ftvm.ip=192.168.127.2/24 ftvm.gw=192.168.127.1 ftvm.dns=1.1.1.1,8.8.8.8 ftvm.port=7000")
	f.Add(`ftvm.workload=none ftvm.ip=dhcp ftvm.disk=/dev/vdb ftvm.fs=xfs ftvm.seconds=10 ftvm.x="a b" ftvm.=1`)
	f.Add(`ftvm.ip=10.0.0.0/24 ftvm.gw=10.0.1.1 ftvm.disk=none ftvm.port=65536 ftvm.seconds=-1 "ftvm.fs= "`)
	f.Add("ftvm.workload=unknown ftvm.dns=::1 ftvm.ip=192.168.127.2 \"unterminated")
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
		d := cfg.Disk
		if d.Device != "" && !strings.HasPrefix(d.Device, "/dev/") || d.FSType == "" || strings.ContainsAny(d.FSType, "/ ,") {
			t.Fatalf("accepted disk %+v", d)
		}
	})
}
