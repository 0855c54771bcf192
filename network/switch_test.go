package network

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

var (
	gatewayMAC = mustMAC(DefaultGatewayMAC)
	gatewayIP  = netip.MustParseAddr("192.168.127.1")
	macA       = mustMAC("5a:94:ef:e4:0c:ee")
	macB       = mustMAC("5a:94:ef:e4:0c:ef")
	ipA        = netip.MustParseAddr("192.168.127.2")
	ipB        = netip.MustParseAddr("192.168.127.3")
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// runSwitch starts a switch serving a socket in a temp dir and stops it at
// the end of the test, checking that Serve returned nil and removed the
// socket.
func runSwitch(t *testing.T, cfg SwitchConfig) (*Switch, string, func()) {
	t.Helper()
	cfg.Logger = testLogger(t)
	sw, err := NewSwitch(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "net.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sw.Serve(ctx, sock) }()
	// Up, not the socket file: the forwards are exposed after the socket
	// appears, and a test that dialed one in between was refused.
	select {
	case <-sw.Up():
	case err := <-served:
		cancel()
		t.Fatalf("Serve returned early: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("switch never came up")
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after cancel")
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind (stat: %v)", sock, err)
		}
	}
	t.Cleanup(stop)
	return sw, sock, stop
}

// fakeGuest is a VMM's view of a guest NIC: a SwitchPort that answers ARP
// for its address (as any guest stack would) and queues every other frame.
type fakeGuest struct {
	port   *SwitchPort
	mac    net.HardwareAddr
	ip     netip.Addr
	frames chan []byte
}

func attachGuest(t *testing.T, sock string, mac net.HardwareAddr, ip netip.Addr) *fakeGuest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := DialSwitch(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGuest{port: p, mac: mac, ip: ip, frames: make(chan []byte, 256)}
	err = p.Start(func(f []byte) bool {
		if a, ok := parseARP(f); ok && a.op == 1 && a.tpa == g.ip {
			_ = p.Send(ethernet(a.sha, g.mac, etherTypeARP, arp(2, g.mac, g.ip, a.sha, a.spa)))
			return true
		}
		select {
		case g.frames <- f:
			return true
		default:
			return false
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return g
}

func (g *fakeGuest) send(t *testing.T, frame []byte) {
	t.Helper()
	if err := g.port.Send(frame); err != nil {
		t.Fatal(err)
	}
}

// waitSees broadcasts probes from g until other receives one: the switch
// registers a connection asynchronously, so "dialled" does not yet mean
// "receives broadcasts".
func (g *fakeGuest) waitSees(t *testing.T, other *fakeGuest) {
	t.Helper()
	probe := ethernet(broadcastMAC, g.mac, etherTypeTest, []byte("probe: are you attached yet? padding to a minimum frame"))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		g.send(t, probe)
		wait := time.After(50 * time.Millisecond)
	drain:
		for {
			select {
			case f := <-other.frames:
				if bytes.Equal(f, probe) {
					return
				}
			case <-wait:
				break drain
			}
		}
	}
	t.Fatalf("%s never saw a broadcast from %s", other.mac, g.mac)
}

// expect returns the first frame match accepts, skipping others (the
// gateway's own chatter), or fails the test after a timeout.
func (g *fakeGuest) expect(t *testing.T, what string, match func([]byte) bool) []byte {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f := <-g.frames:
			if match(f) {
				return f
			}
		case <-timeout:
			t.Fatalf("guest %s: no %s within 10s", g.mac, what)
			return nil
		}
	}
}

func TestSwitchGatewayARPAndICMP(t *testing.T) {
	_, sock, _ := runSwitch(t, SwitchConfig{})
	a := attachGuest(t, sock, macA, ipA)
	b := attachGuest(t, sock, macB, ipB)
	a.waitSees(t, b)
	b.waitSees(t, a)

	// Who has 192.168.127.1? The gateway answers with its MAC.
	a.send(t, ethernet(broadcastMAC, macA, etherTypeARP, arp(1, macA, ipA, make(net.HardwareAddr, 6), gatewayIP)))
	reply := a.expect(t, "ARP reply from the gateway", func(f []byte) bool {
		p, ok := parseARP(f)
		return ok && p.op == 2 && p.spa == gatewayIP
	})
	if p, _ := parseARP(reply); !macEqual(p.sha, gatewayMAC) || !macEqual(p.tha, macA) || p.tpa != ipA {
		t.Errorf("ARP reply %+v: want gateway MAC %s to %s/%s", p, gatewayMAC, macA, ipA)
	}
	// The broadcast request also reached the other port.
	b.expect(t, "A's broadcast ARP request", func(f []byte) bool {
		p, ok := parseARP(f)
		return ok && p.op == 1 && macEqual(p.sha, macA)
	})

	// Ping the gateway.
	payload := []byte("ftvm ping through the switch")
	a.send(t, ethernet(gatewayMAC, macA, etherTypeIPv4, ipv4(1, ipA, gatewayIP, icmpEcho(0x1234, 7, payload))))
	echo := a.expect(t, "ICMP echo reply", func(f []byte) bool {
		ip, ok := parseIPv4(f)
		return ok && ip.proto == 1 && len(ip.payload) >= 8 && ip.payload[0] == 0
	})
	ip, _ := parseIPv4(echo)
	if ip.src != gatewayIP || ip.dst != ipA || !macEqual(echo[0:6], macA) {
		t.Errorf("echo reply %s -> %s to %s", ip.src, ip.dst, net.HardwareAddr(echo[0:6]))
	}
	if id, seq := binary.BigEndian.Uint16(ip.payload[4:]), binary.BigEndian.Uint16(ip.payload[6:]); id != 0x1234 || seq != 7 || !bytes.Equal(ip.payload[8:], payload) {
		t.Errorf("echo reply id %#x seq %d payload %q", id, seq, ip.payload[8:])
	}
	if checksum(ip.payload) != 0 {
		t.Error("echo reply ICMP checksum does not verify")
	}

	// Port to port: once B has spoken, the switch delivers unicast to it
	// byte-exact, and not to A.
	b.send(t, ethernet(broadcastMAC, macB, etherTypeTest, []byte("hello from B, padding to 60 bytes ......................")))
	a.expect(t, "B's broadcast", func(f []byte) bool { return bytes.Equal(f[6:12], macB) })
	direct := ethernet(macB, macA, etherTypeTest, bytes.Repeat([]byte{0x5a}, 1500))
	a.send(t, direct)
	got := b.expect(t, "unicast from A", func(f []byte) bool {
		return bytes.Equal(f[6:12], macA) && binary.BigEndian.Uint16(f[12:]) == etherTypeTest
	})
	if !bytes.Equal(got, direct) {
		t.Errorf("unicast frame differs: %d bytes, want %d", len(got), len(direct))
	}
	if s := a.port.Stats(); s.SentFrames < 3 || s.SendDropped != 0 {
		t.Errorf("A stats %+v", s)
	}
}

func TestSwitchDHCPStaticLease(t *testing.T) {
	fixed := netip.MustParseAddr("192.168.127.42")
	// The lease is given in another spelling than DHCP reports the MAC in.
	_, sock, _ := runSwitch(t, SwitchConfig{StaticLeases: map[string]string{"5A-94-EF-E4-0C-EE": fixed.String()}})
	g := attachGuest(t, sock, macA, netip.Addr{})
	disc, err := dhcpv4.NewDiscovery(macA)
	if err != nil {
		t.Fatal(err)
	}
	g.send(t, ethernet(broadcastMAC, macA, etherTypeIPv4,
		ipv4(17, netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), udp(68, 67, disc.ToBytes()))))
	f := g.expect(t, "DHCP offer", func(f []byte) bool {
		ip, ok := parseIPv4(f)
		return ok && ip.proto == 17 && len(ip.payload) > 8 && binary.BigEndian.Uint16(ip.payload[2:]) == 68
	})
	ip, _ := parseIPv4(f)
	offer, err := dhcpv4.FromBytes(ip.payload[8:])
	if err != nil {
		t.Fatal(err)
	}
	if offer.MessageType() != dhcpv4.MessageTypeOffer || !offer.YourIPAddr.Equal(fixed.AsSlice()) {
		t.Errorf("DHCP %s offers %s, want an offer of the static lease %s", offer.MessageType(), offer.YourIPAddr, fixed)
	}
	if dns := offer.DNS(); len(dns) == 0 || !dns[0].Equal(gatewayIP.AsSlice()) {
		t.Errorf("offer's DNS = %v, want the gateway", dns)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestSwitchPortForward(t *testing.T) {
	port := freePort(t)
	fw, err := ParseForward(strconv.Itoa(port) + "=80") // the short form: 127.0.0.1, default guest
	if err != nil {
		t.Fatal(err)
	}
	sw, sock, stop := runSwitch(t, SwitchConfig{Forwards: []Forward{fw}})
	if got := sw.Config().Forwards[0]; got.Host != "127.0.0.1:"+strconv.Itoa(port) || got.Guest != "192.168.127.2:80" {
		t.Fatalf("forward resolved to %s", got)
	}
	g := attachGuest(t, sock, macA, ipA)
	// Announce ourselves so the switch knows which port has macA (a real
	// guest does this with DHCP or ARP long before anyone connects).
	g.send(t, ethernet(broadcastMAC, macA, etherTypeARP, arp(1, macA, ipA, make(net.HardwareAddr, 6), ipA)))

	client, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	if err != nil {
		t.Fatalf("forward listener did not accept: %v", err)
	}
	defer client.Close()
	// The switch now opens the connection to the guest: a SYN to .2:80.
	syn := g.expect(t, "TCP SYN to port 80", func(f []byte) bool {
		ip, ok := parseIPv4(f)
		return ok && ip.proto == 6 && len(ip.payload) >= 20 && binary.BigEndian.Uint16(ip.payload[2:]) == 80
	})
	ip, _ := parseIPv4(syn)
	flags := ip.payload[13]
	if ip.dst != ipA || !macEqual(syn[0:6], macA) || flags&0x02 == 0 || flags&0x10 != 0 {
		t.Errorf("got %s -> %s (to %s) flags %#x, want a SYN to %s at %s", ip.src, ip.dst, net.HardwareAddr(syn[0:6]), flags, ipA, macA)
	}
	client.Close()

	// Stopping the switch frees the host port.
	stop()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("forward port still held after the switch stopped: %v", err)
	}
	ln.Close()
	select {
	case <-g.port.Done():
	case <-time.After(5 * time.Second):
		t.Error("port not done after the switch stopped")
	}
	if g.port.Err() == nil {
		t.Error("port Err is nil after the switch went away")
	}
	if err := g.port.Send(make([]byte, 60)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after the switch went away: %v, want ErrClosed", err)
	}
}

func TestSwitchSocketPathChecks(t *testing.T) {
	_, sock, _ := runSwitch(t, SwitchConfig{})
	sw2, err := NewSwitch(SwitchConfig{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := sw2.Serve(ctx, sock); err == nil || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), sock) {
		t.Errorf("second switch on a live socket: %v", err)
	}

	// A socket left by a dead switch is taken over.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sw2.Serve(cctx, stale) }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve over a stale socket: %v", err)
	}

	// A regular file is never removed.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if err := sw2.Serve(ctx, file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Serve on a regular file: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("regular file removed: %v", err)
	}
}

func TestSwitchForwardPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	okPort := freePort(t)
	sw, err := NewSwitch(SwitchConfig{Logger: testLogger(t), Forwards: []Forward{
		{Host: "127.0.0.1:" + strconv.Itoa(okPort), Guest: "192.168.127.2:22"},
		{Host: busy.Addr().String(), Guest: "192.168.127.2:80"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "net.sock")
	err = sw.Serve(context.Background(), sock)
	if err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("Serve with a busy forward port: %v, want an error naming it", err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after a failed Serve")
	}
	// The forward that did start was undone.
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(okPort))
	if err != nil {
		t.Errorf("first forward's port still held: %v", err)
	} else {
		ln.Close()
	}
}

func TestParseForward(t *testing.T) {
	good := map[string]Forward{
		"127.0.0.1:8080=192.168.127.2:80": {Host: "127.0.0.1:8080", Guest: "192.168.127.2:80"},
		"8080=80":                         {Host: "127.0.0.1:8080", Guest: ":80"},
		"0.0.0.0:2222=192.168.127.5:22":   {Host: "0.0.0.0:2222", Guest: "192.168.127.5:22"},
		"8080=192.168.127.9:8080":         {Host: "127.0.0.1:8080", Guest: "192.168.127.9:8080"},
	}
	for spec, want := range good {
		got, err := ParseForward(spec)
		if err != nil || got != want {
			t.Errorf("ParseForward(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, spec := range []string{"", "8080", "8080=", "=80", "127.0.0.1:99999=80", "localhost:80=80", "8080=host:80", "8080=80:", "[::1]:80=80", "8080=0"} {
		_, err := ParseForward(spec)
		if err == nil {
			t.Errorf("ParseForward(%q) succeeded", spec)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(spec)) {
			t.Errorf("ParseForward(%q) error %q does not quote the value", spec, err)
		}
	}
}

func TestNewSwitchValidates(t *testing.T) {
	cases := map[string]SwitchConfig{
		"bad subnet":         {Subnet: "192.168.127.0/33"},
		"IPv6 subnet":        {Subnet: "fd00::/64"},
		"gateway outside":    {GatewayIP: "10.0.0.1"},
		"bad gateway MAC":    {GatewayMAC: "zz"},
		"lease bad MAC":      {StaticLeases: map[string]string{"nope": "192.168.127.2"}},
		"lease outside":      {StaticLeases: map[string]string{"5a:94:ef:e4:0c:ee": "10.0.0.2"}},
		"lease on gateway":   {StaticLeases: map[string]string{"5a:94:ef:e4:0c:ee": "192.168.127.1"}},
		"duplicate lease":    {StaticLeases: map[string]string{"5a:94:ef:e4:0c:ee": "192.168.127.2", "5a:94:ef:e4:0c:ef": "192.168.127.2"}},
		"forward outside":    {Forwards: []Forward{{Host: "127.0.0.1:8080", Guest: "10.0.0.2:80"}}},
		"forward twice":      {Forwards: []Forward{{Host: "127.0.0.1:8080", Guest: ":80"}, {Host: "127.0.0.1:8080", Guest: ":81"}}},
		"host IP on gateway": {HostIP: "192.168.127.1"},
		"MTU too small":      {MTU: 100},
	}
	for name, cfg := range cases {
		if _, err := NewSwitch(cfg); err == nil {
			t.Errorf("%s: NewSwitch succeeded", name)
		}
	}
}
