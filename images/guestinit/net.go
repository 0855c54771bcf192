package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// netIf is the guest NIC: the first (only) virtio-net device.
const netIf = "eth0"

// Timeouts of network bring-up. Built-in drivers probe before /init runs,
// so eth0 is normally there at once; the wait covers a slow probe.
const (
	linkWait    = 10 * time.Second
	carrierWait = 2 * time.Second
	dhcpWait    = 30 * time.Second
)

// netResult is what bringUpNet configured.
type netResult struct {
	Addr    netip.Prefix
	Gateway netip.Addr
	DNS     []netip.Addr
	Via     string
}

// line is the machine-readable console line for the host.
func (r netResult) line() string {
	gw := "none"
	if r.Gateway.IsValid() {
		gw = r.Gateway.String()
	}
	s := fmt.Sprintf("ftvm-guest net %s=%s gw=%s", netIf, r.Addr, gw)
	if len(r.DNS) > 0 {
		s += " dns=" + joinAddrs(r.DNS, ",")
	}
	return s + " via=" + r.Via
}

func joinAddrs(as []netip.Addr, sep string) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}

// bringUpNet brings lo up and, if nc asks for it, configures eth0 with a
// static address or by DHCP and sets the default route. resolvConf is the
// file to write DNS servers to ("" to skip). It must run on one goroutine
// without yielding to others' threads: its sockets belong to the calling
// thread's network namespace, which is what tests use.
func bringUpNet(ctx context.Context, nc NetConfig, resolvConf string) (netResult, error) {
	c, err := dialRtnl()
	if err != nil {
		return netResult{}, err
	}
	defer c.Close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return netResult{}, fmt.Errorf("loopback: %w", err)
	}
	if err := c.LinkUp(lo.Index); err != nil {
		return netResult{}, fmt.Errorf("loopback: %w", err)
	}
	if nc.Mode == NetNone {
		return netResult{}, nil
	}
	ifc, err := waitLink(ctx, netIf, linkWait)
	if err != nil {
		return netResult{}, err
	}
	if err := c.LinkUp(ifc.Index); err != nil {
		return netResult{}, err
	}
	// Frames sent before the carrier is seen are dropped (the device's
	// queue is activated only then), which would cost DHCP a retry.
	waitRunning(ctx, netIf, carrierWait)
	res := netResult{Addr: nc.Addr, Gateway: nc.Gateway, DNS: nc.DNS, Via: "static"}
	if nc.Mode == NetDHCP {
		dctx, cancel := context.WithTimeout(ctx, dhcpWait)
		lease, err := dhcpAcquire(dctx, netIf, ifc.HardwareAddr)
		cancel()
		if err != nil {
			return netResult{}, fmt.Errorf("%w (is the host's DHCP server on this network? give ftvm.ip=ADDR/LEN instead)", err)
		}
		res.Addr, res.Via = lease.Addr, "dhcp"
		if !res.Gateway.IsValid() {
			res.Gateway = lease.Router
		}
		if len(res.DNS) == 0 {
			res.DNS = lease.DNS
		}
	}
	if err := c.AddAddr(ifc.Index, res.Addr); err != nil {
		return netResult{}, err
	}
	if res.Gateway.IsValid() {
		if err := c.AddDefaultRoute(ifc.Index, res.Gateway); err != nil {
			return netResult{}, err
		}
	}
	if resolvConf != "" && len(res.DNS) > 0 {
		if err := writeResolvConf(resolvConf, res.DNS); err != nil {
			return netResult{}, err
		}
	}
	return res, nil
}

// waitLink polls for the interface: virtio-net's probe names it, and there
// is no udev to tell us when.
func waitLink(ctx context.Context, name string, timeout time.Duration) (*net.Interface, error) {
	deadline := time.Now().Add(timeout)
	for {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			return ifc, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("%s did not appear within %s (interfaces: %s); a virtio-net device needs virtio_mmio.device=<size>@<addr>:<irq> on the kernel command line", name, timeout, interfaceNames())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRunning waits until the interface reports carrier (RUNNING). It is
// best effort: a link without carrier is still configured.
func waitRunning(ctx context.Context, name string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if ifc, err := net.InterfaceByName(name); err == nil && ifc.Flags&net.FlagRunning != 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func interfaceNames() string {
	ifs, err := net.Interfaces()
	if err != nil {
		return "unknown: " + err.Error()
	}
	names := make([]string, len(ifs))
	for i, ifc := range ifs {
		names[i] = ifc.Name
	}
	return strings.Join(names, ",")
}

// resolvConfText is the content of /etc/resolv.conf for servers.
func resolvConfText(servers []netip.Addr) string {
	var b strings.Builder
	b.WriteString("# written by ftvm's /init\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.String()
}

func writeResolvConf(path string, servers []netip.Addr) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(resolvConfText(servers)), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}
