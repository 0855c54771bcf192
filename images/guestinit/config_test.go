package main

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
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
