package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/internal/testenv"
)

func TestBroadcast(t *testing.T) {
	for in, want := range map[string]string{
		"192.168.127.2/24": "192.168.127.255",
		"10.1.2.3/8":       "10.255.255.255",
		"10.0.0.1/30":      "10.0.0.3",
		"10.0.0.1/31":      "",
		"10.0.0.1/32":      "",
	} {
		got, ok := broadcast(netip.MustParsePrefix(in))
		if (want == "" && ok) || (want != "" && got.String() != want) {
			t.Errorf("broadcast(%s) = %v %v, want %q", in, got, ok, want)
		}
	}
}

func TestNetlinkEncoding(t *testing.T) {
	// An attribute of 5 bytes is padded to 12: 4 header + 5 data + 3 pad.
	b := appendAttr(nil, 7, []byte{1, 2, 3, 4, 5})
	want := append(binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(nil, 9), 7), 1, 2, 3, 4, 5, 0, 0, 0)
	if !bytes.Equal(b, want) {
		t.Fatalf("appendAttr: % x, want % x", b, want)
	}
	m := nlMessage(unix.RTM_NEWADDR, unix.NLM_F_CREATE, 42, []byte{1, 2, 3, 4})
	msgs, err := syscall.ParseNetlinkMessage(m)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("parse own message: %v %v", msgs, err)
	}
	h := msgs[0].Header
	if h.Type != unix.RTM_NEWADDR || h.Seq != 42 || h.Flags != unix.NLM_F_CREATE|unix.NLM_F_REQUEST|unix.NLM_F_ACK || !bytes.Equal(msgs[0].Data, []byte{1, 2, 3, 4}) {
		t.Fatalf("header %+v data % x", h, msgs[0].Data)
	}
}

func TestParseAck(t *testing.T) {
	errMsg := func(seq uint32, errno int32) []byte {
		body := binary.NativeEndian.AppendUint32(nil, uint32(errno))
		body = append(body, make([]byte, 16)...) // the echoed request header
		b := nlMessage(unix.NLMSG_ERROR, 0, seq, body)
		return b
	}
	if done, err := parseAck(errMsg(3, 0), 3); !done || err != nil {
		t.Errorf("ack: %v %v", done, err)
	}
	if done, err := parseAck(errMsg(3, -int32(unix.EEXIST)), 3); !done || err != unix.EEXIST {
		t.Errorf("EEXIST: %v %v", done, err)
	}
	if done, _ := parseAck(errMsg(2, 0), 3); done {
		t.Error("ack of another request taken")
	}
	if done, err := parseAck([]byte{1, 2, 3}, 3); done && err == nil {
		t.Error("garbage taken as an ack")
	}
}

func TestNetLineAndResolvConf(t *testing.T) {
	a := netip.MustParseAddr
	r := netResult{Addr: netip.MustParsePrefix("192.168.127.2/24"), Gateway: a("192.168.127.1"), Via: "static"}
	if got := r.line(); got != "ftvm-guest net eth0=192.168.127.2/24 gw=192.168.127.1 via=static" {
		t.Errorf("%q", got)
	}
	r = netResult{Addr: netip.MustParsePrefix("10.0.2.15/24"), DNS: []netip.Addr{a("10.0.2.3"), a("1.1.1.1")}, Via: "dhcp"}
	if got := r.line(); got != "ftvm-guest net eth0=10.0.2.15/24 gw=none dns=10.0.2.3,1.1.1.1 via=dhcp" {
		t.Errorf("%q", got)
	}
	if got := resolvConfText(r.DNS); got != "# written by ftvm's /init\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n" {
		t.Errorf("%q", got)
	}
}

func TestDHCPMessages(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	b := clientMsg(dhcpDiscover, mac, nil)
	if len(b) != 300 || b[0] != 1 || b[1] != 1 || b[2] != 6 || !bytes.Equal(b[236:240], dhcpMagic) || binary.BigEndian.Uint16(b[10:]) != 0x8000 {
		t.Fatalf("discover: % x", b[:12])
	}
	m, err := parseDHCP(b)
	if err != nil || m.msgType() != dhcpDiscover || m.XID != dhcpXID(mac) || !bytes.Equal(m.CHAddr, mac) {
		t.Fatalf("parse discover: %+v %v", m, err)
	}
	if !bytes.Equal(m.Options[optParamRequest], []byte{optSubnetMask, optRouter, optDNS}) {
		t.Fatalf("param request list % x", m.Options[optParamRequest])
	}

	// A server's ACK, with options split across a repeated DNS option.
	ack := encodeDHCP(dhcpMsg{Op: 2, XID: dhcpXID(mac), CHAddr: mac, Options: map[byte][]byte{
		optMessageType: {dhcpAck}, optSubnetMask: {255, 255, 255, 0}, optRouter: {192, 168, 127, 1},
		optServerID: {192, 168, 127, 1},
	}})[:240+3+6+6+6] // up to the options, without end and padding
	copy(ack[16:20], []byte{192, 168, 127, 2})
	ack = append(ack, optPad, optDNS, 4, 192, 168, 127, 1, optDNS, 4, 1, 1, 1, 1) // split option, no end
	m, err = parseDHCP(ack)
	if err != nil {
		t.Fatal(err)
	}
	l, err := m.lease()
	want := Lease{Addr: netip.MustParsePrefix("192.168.127.2/24"), Router: netip.MustParseAddr("192.168.127.1"),
		Server: netip.MustParseAddr("192.168.127.1"), DNS: []netip.Addr{netip.MustParseAddr("192.168.127.1"), netip.MustParseAddr("1.1.1.1")}}
	if err != nil || !reflect.DeepEqual(l, want) {
		t.Fatalf("lease %+v %v, want %+v", l, err, want)
	}

	for name, bad := range map[string][]byte{
		"short":            b[:100],
		"no magic":         append(bytes.Clone(b[:236]), 1, 2, 3, 4),
		"option overrun":   append(bytes.Clone(b[:240]), optDNS, 8, 1, 2),
		"option no length": append(bytes.Clone(b[:240]), optDNS),
	} {
		if _, err := parseDHCP(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	if _, err := (dhcpMsg{Options: map[byte][]byte{}}).lease(); err == nil {
		t.Error("lease without address")
	}
}

func FuzzParseDHCP(f *testing.F) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	f.Add(clientMsg(dhcpDiscover, mac, nil))
	f.Add(clientMsg(dhcpRequest, mac, map[byte][]byte{optRequestedIP: {1, 2, 3, 4}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDHCP(b)
		if err != nil {
			return
		}
		m.msgType()
		m.lease()
	})
}

// netns is a network namespace made with ip(8) for a test.
type netns struct{ name string }

func newNetns(t *testing.T, name string) netns {
	t.Helper()
	n := netns{fmt.Sprintf("ftvm-gi-%s-%d", name, os.Getpid())}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	return n
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs f on a thread moved into ns. The thread is never given back
// to the scheduler (no UnlockOSThread), so it dies with the goroutine
// instead of carrying the namespace into unrelated code.
func inNetns(t *testing.T, ns netns, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		fd, err := unix.Open(filepath.Join("/run/netns", ns.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Errorf("open netns: %v", err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			t.Errorf("setns: %v", err)
			return
		}
		f()
	}()
	<-done
}

// guestAndHost makes two namespaces joined by a veth pair: "eth0" in the
// guest one and "srv0" with 192.168.127.1/24 in the host one.
func guestAndHost(t *testing.T) (guest, host netns) {
	t.Helper()
	testenv.NeedRoot(t, "network namespaces")
	testenv.NeedTools(t, "ip", "busybox")
	guest, host = newNetns(t, "g"), newNetns(t, "h")
	run(t, "ip", "link", "add", "eth0", "netns", guest.name, "type", "veth", "peer", "name", "srv0", "netns", host.name)
	run(t, "ip", "-n", host.name, "addr", "add", "192.168.127.1/24", "dev", "srv0")
	run(t, "ip", "-n", host.name, "link", "set", "srv0", "up")
	return guest, host
}

func checkConfigured(t *testing.T, guest, host netns, addr string) {
	t.Helper()
	if out := run(t, "ip", "-n", guest.name, "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, "inet "+addr+" brd 192.168.127.255") || !strings.Contains(out, "UP") {
		t.Errorf("eth0 after bring-up:\n%s", out)
	}
	if out := run(t, "ip", "-n", guest.name, "route", "show", "default"); !strings.Contains(out, "default via 192.168.127.1 dev eth0") {
		t.Errorf("routes after bring-up:\n%s", out)
	}
	if out := run(t, "ip", "-n", guest.name, "link", "show", "lo"); !strings.Contains(out, "UP") {
		t.Errorf("lo after bring-up:\n%s", out)
	}
	ip, _, _ := strings.Cut(addr, "/")
	run(t, "ip", "netns", "exec", host.name, "busybox", "ping", "-c", "1", "-W", "5", ip)
}

// TestNetStaticInNetns configures eth0 of a veth pair exactly as /init
// would, then checks it with ip(8) and a ping from the other end.
func TestNetStaticInNetns(t *testing.T) {
	guest, host := guestAndHost(t)
	resolv := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	nc := NetConfig{Mode: NetStatic, Addr: netip.MustParsePrefix("192.168.127.2/24"),
		Gateway: netip.MustParseAddr("192.168.127.1"), DNS: []netip.Addr{netip.MustParseAddr("192.168.127.1")}}
	var res netResult
	var err error
	inNetns(t, guest, func() { res, err = bringUpNet(context.Background(), nc, resolv) })
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.line())
	checkConfigured(t, guest, host, "192.168.127.2/24")
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 192.168.127.1\n") {
		t.Errorf("resolv.conf: %q", b)
	}
	// Bring-up is idempotent (NLM_F_REPLACE): a second run succeeds.
	inNetns(t, guest, func() { _, err = bringUpNet(context.Background(), nc, "") })
	if err != nil {
		t.Fatalf("second bring-up: %v", err)
	}
}

// TestNetDHCPInNetns gets the address from busybox's udhcpd, an
// independent DHCP server, on the other end of the veth pair.
func TestNetDHCPInNetns(t *testing.T) {
	guest, host := guestAndHost(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "udhcpd.conf")
	os.WriteFile(filepath.Join(dir, "leases"), nil, 0o644)
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`start 192.168.127.2
end 192.168.127.20
interface srv0
lease_file %s/leases
pidfile %s/pid
opt subnet 255.255.255.0
opt router 192.168.127.1
opt dns 192.168.127.1 192.168.127.53
`, dir, dir)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	srv := exec.Command("ip", "netns", "exec", host.name, "busybox", "udhcpd", "-f", conf)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			t.Logf("udhcpd:\n%s", srvOut.String())
		}
	}()
	resolv := filepath.Join(dir, "resolv.conf")
	var res netResult
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	inNetns(t, guest, func() { res, err = bringUpNet(ctx, NetConfig{Mode: NetDHCP}, resolv) })
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.line())
	if res.Via != "dhcp" || res.Gateway != netip.MustParseAddr("192.168.127.1") || len(res.DNS) != 2 {
		t.Errorf("result %+v", res)
	}
	checkConfigured(t, guest, host, res.Addr.String())
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 192.168.127.53\n") {
		t.Errorf("resolv.conf: %q", b)
	}
}

// TestNetMissingLink: ftvm.ip without a NIC fails with a line that says
// what to check.
func TestNetMissingLink(t *testing.T) {
	testenv.NeedRoot(t, "network namespaces")
	ns := newNetns(t, "empty")
	var err error
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	inNetns(t, ns, func() {
		_, err = bringUpNet(ctx, NetConfig{Mode: NetStatic, Addr: netip.MustParsePrefix("10.0.0.2/24")}, "")
	})
	if err == nil || !strings.Contains(err.Error(), "eth0 did not appear") || !strings.Contains(err.Error(), "interfaces: lo") {
		t.Fatalf("%v", err)
	}
}
