package network

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/containers/gvisor-tap-vsock/pkg/virtualnetwork"
	"github.com/ftvm/ftvm/internal/unixsock"
)

// Defaults of the virtual network, the ones gvproxy uses, so guests and
// documentation written for gvisor-tap-vsock apply unchanged.
const (
	DefaultSubnet     = "192.168.127.0/24"
	DefaultGatewayMAC = "5a:94:ef:e4:0c:dd"
	DefaultMTU        = 1500
	// DNSDomain is the zone the gateway's DNS server answers itself:
	// gateway.ftvm.internal, and host.ftvm.internal when HostIP is set.
	// Other names are resolved with the host's resolver.
	DNSDomain = "ftvm.internal."
)

// SwitchConfig describes the virtual network. The zero value is the default
// network: 192.168.127.0/24, gateway (and DNS, DHCP) at .1.
type SwitchConfig struct {
	// Subnet is the network in CIDR form; default DefaultSubnet.
	Subnet string
	// GatewayIP is the switch's own address; default the first host of
	// Subnet (.1).
	GatewayIP string
	// GatewayMAC is the gateway's MAC; default DefaultGatewayMAC.
	GatewayMAC string
	// MTU of the network; default DefaultMTU.
	MTU int
	// StaticLeases maps a guest MAC to the IPv4 address DHCP gives it, so a
	// guest with a fixed MAC (from its VM config) always gets the same IP.
	// Guests without a lease get the lowest free address.
	StaticLeases map[string]string
	// Forwards expose guest TCP services on host addresses.
	Forwards []Forward
	// HostIP, if set, is an address in Subnet through which the guest
	// reaches the host's loopback (127.0.0.1). Off by default: a guest should
	// not see host-local services unless asked for.
	HostIP string
	// Logger receives attach/detach and forward messages; default
	// slog.Default().
	Logger *slog.Logger
}

// Forward exposes a guest TCP service on a host address: connections
// accepted on Host are proxied by the switch to Guest inside the network.
type Forward struct {
	Host  string // host listen address, "127.0.0.1:8080"
	Guest string // guest address, "192.168.127.2:80"
}

func (f Forward) String() string { return f.Host + "=" + f.Guest }

// ParseForward parses "HOST=GUEST" where HOST is "IP:PORT" or "PORT" (then
// 127.0.0.1, so a forward is host-local unless an address is given) and GUEST
// is "IP:PORT" or "PORT" (then the default guest address, the first host after
// the gateway, which NewSwitch fills in). Errors quote spec.
func ParseForward(spec string) (Forward, error) {
	bad := func(why string) (Forward, error) {
		return Forward{}, fmt.Errorf("bad forward %q: %s (want HOST=GUEST, e.g. 127.0.0.1:8080=192.168.127.2:80 or 8080=80)", spec, why)
	}
	host, guest, ok := strings.Cut(spec, "=")
	if !ok {
		return bad("no '='")
	}
	h, err := parseEndpoint(host, "127.0.0.1")
	if err != nil {
		return bad("host side: " + err.Error())
	}
	g, err := parseEndpoint(guest, "")
	if err != nil {
		return bad("guest side: " + err.Error())
	}
	return Forward{Host: h, Guest: g}, nil
}

// parseEndpoint accepts "IP:PORT" or "PORT"; a bare port gets defaultIP
// (which may be empty: filled in later).
func parseEndpoint(s, defaultIP string) (string, error) {
	s = strings.TrimSpace(s)
	ipStr, portStr := defaultIP, s
	if strings.Contains(s, ":") {
		var err error
		ipStr, portStr, err = net.SplitHostPort(s)
		if err != nil {
			return "", err
		}
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", fmt.Errorf("port %q is not in 1-65535", portStr)
	}
	if ipStr == "" {
		return ":" + portStr, nil
	}
	ip, err := netip.ParseAddr(ipStr)
	if err != nil || !ip.Is4() {
		return "", fmt.Errorf("%q is not an IPv4 address", ipStr)
	}
	return netip.AddrPortFrom(ip, uint16(port)).String(), nil
}

// Switch is the embedded gvisor-tap-vsock virtual network: an Ethernet
// switch whose gateway runs a userspace TCP/IP stack with DHCP, DNS, NAT to
// the host's network and port forwards. It is meant to live in its own
// long-lived process so that it outlives the VMMs attached to it.
type Switch struct {
	cfg      SwitchConfig // with defaults filled in
	vn       *virtualnetwork.VirtualNetwork
	services http.Handler
	log      *slog.Logger

	mu      sync.Mutex
	serving bool
	nextID  int

	// up is closed once Serve listens with every forward exposed.
	up     chan struct{}
	upOnce sync.Once
}

// Up returns a channel that is closed once Serve listens on its socket with
// every forward exposed: a client that dials a forward before then finds
// nothing listening (Serve creates the socket first, then the forwards).
func (s *Switch) Up() <-chan struct{} { return s.up }

// NewSwitch validates cfg and builds the network. Forwards are not listened
// on until Serve. Because gvisor-tap-vsock cannot stop its DHCP and DNS
// goroutines, a Switch lives until the process exits; build one per process.
func NewSwitch(cfg SwitchConfig) (*Switch, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	leases := make(map[string]string, len(c.StaticLeases))
	for mac, ip := range c.StaticLeases {
		leases[ip] = mac // gvisor-tap-vsock keys leases by IP
	}
	gcfg := &types.Configuration{
		MTU:               c.MTU,
		Subnet:            c.Subnet,
		GatewayIP:         c.GatewayIP,
		GatewayMacAddress: c.GatewayMAC,
		DHCPStaticLeases:  leases,
		Protocol:          types.QemuProtocol,
		DNS: []types.Zone{{
			Name:    DNSDomain,
			Records: []types.Record{{Name: "gateway", IP: net.ParseIP(c.GatewayIP)}},
		}},
	}
	if c.HostIP != "" {
		gcfg.NAT = map[string]string{c.HostIP: "127.0.0.1"}
		gcfg.GatewayVirtualIPs = []string{c.HostIP}
		gcfg.DNS[0].Records = append(gcfg.DNS[0].Records, types.Record{Name: "host", IP: net.ParseIP(c.HostIP)})
	}
	vn, err := virtualnetwork.New(gcfg)
	if err != nil {
		return nil, fmt.Errorf("create virtual network %s: %w", c.Subnet, err)
	}
	return &Switch{cfg: c, vn: vn, services: vn.ServicesMux(), log: c.Logger, up: make(chan struct{})}, nil
}

// withDefaults fills in defaults and checks that every address fits the
// subnet, so mistakes surface here with the offending value rather than as a
// guest that never gets traffic.
func (cfg SwitchConfig) withDefaults() (SwitchConfig, error) {
	c := cfg
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Subnet == "" {
		c.Subnet = DefaultSubnet
	}
	prefix, err := netip.ParsePrefix(c.Subnet)
	if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 29 {
		return c, fmt.Errorf("bad subnet %q: want an IPv4 CIDR of /29 or larger, e.g. %s", cfg.Subnet, DefaultSubnet)
	}
	prefix = prefix.Masked()
	c.Subnet = prefix.String()
	hostAddr := func(what, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return a, fmt.Errorf("bad %s %q: not an IPv4 address", what, s)
		}
		if !prefix.Contains(a) || a == prefix.Addr() {
			return a, fmt.Errorf("bad %s %s: not a host address in subnet %s", what, s, c.Subnet)
		}
		return a, nil
	}
	gw := prefix.Addr().Next()
	if c.GatewayIP != "" {
		if gw, err = hostAddr("gateway IP", c.GatewayIP); err != nil {
			return c, err
		}
	}
	c.GatewayIP = gw.String()
	if c.GatewayMAC == "" {
		c.GatewayMAC = DefaultGatewayMAC
	}
	mac, err := net.ParseMAC(c.GatewayMAC)
	if err != nil || len(mac) != 6 {
		return c, fmt.Errorf("bad gateway MAC %q: want six hex bytes, e.g. %s", cfg.GatewayMAC, DefaultGatewayMAC)
	}
	c.GatewayMAC = mac.String()
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 576 || c.MTU > MaxFrameSize-14 {
		return c, fmt.Errorf("bad MTU %d: want 576-%d", c.MTU, MaxFrameSize-14)
	}
	if c.HostIP != "" {
		a, err := hostAddr("host IP", c.HostIP)
		if err != nil {
			return c, err
		}
		if a == gw {
			return c, fmt.Errorf("bad host IP %s: it is the gateway's address", a)
		}
	}
	c.StaticLeases = make(map[string]string, len(cfg.StaticLeases))
	taken := map[netip.Addr]string{}
	for m, ipStr := range cfg.StaticLeases {
		mac, err := net.ParseMAC(m)
		if err != nil || len(mac) != 6 {
			return c, fmt.Errorf("bad static lease %s=%s: %q is not a MAC address", m, ipStr, m)
		}
		ip, err := hostAddr("static lease address for "+m, ipStr)
		if err != nil {
			return c, err
		}
		if ip == gw {
			return c, fmt.Errorf("bad static lease %s=%s: that is the gateway's address", m, ipStr)
		}
		if other, dup := taken[ip]; dup {
			return c, fmt.Errorf("bad static lease %s=%s: address already leased to %s", m, ipStr, other)
		}
		taken[ip] = m
		// gvisor-tap-vsock compares MACs as strings in net.HardwareAddr's
		// form; normalise so "5A-94-..." matches what DHCP sees.
		c.StaticLeases[mac.String()] = ip.String()
	}
	c.Forwards = make([]Forward, 0, len(cfg.Forwards))
	seen := map[string]bool{}
	for _, f := range cfg.Forwards {
		if strings.HasPrefix(f.Guest, ":") {
			f.Guest = gw.Next().String() + f.Guest
		}
		ap, err := netip.ParseAddrPort(f.Guest)
		if err != nil {
			return c, fmt.Errorf("bad forward %s: guest %q is not IP:PORT", f, f.Guest)
		}
		if _, err := hostAddr("forward "+f.String()+" guest address", ap.Addr().String()); err != nil {
			return c, err
		}
		if _, err := netip.ParseAddrPort(f.Host); err != nil {
			return c, fmt.Errorf("bad forward %s: host %q is not IP:PORT", f, f.Host)
		}
		if seen[f.Host] {
			return c, fmt.Errorf("bad forward %s: host address %s is forwarded twice", f, f.Host)
		}
		seen[f.Host] = true
		c.Forwards = append(c.Forwards, f)
	}
	return c, nil
}

// Config returns the configuration with defaults filled in.
func (s *Switch) Config() SwitchConfig { return s.cfg }

// Attach runs conn as one switch port speaking the frame-stream protocol
// until the connection ends or ctx is done, and then closes conn. The VMM's
// MAC is learnt from the frames it sends.
func (s *Switch) Attach(ctx context.Context, conn net.Conn) error {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.mu.Unlock()
	s.log.Info("network: VMM attached", "port", id)
	// The switch's reader only looks at ctx between frames; closing conn is
	// what ends a blocked read at shutdown.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	err := s.vn.AcceptQemu(ctx, conn)
	_ = conn.Close()
	if ctx.Err() != nil {
		err = nil
	}
	s.log.Info("network: VMM detached", "port", id, "reason", errString(err))
	return err
}

func errString(err error) string {
	switch {
	case err == nil:
		return "switch shutting down"
	case errors.Is(err, io.EOF):
		return "VMM closed the connection"
	}
	return err.Error()
}

// Serve exposes the forwards, listens on the unix socket socketPath and
// attaches every connection as a switch port, until ctx is done. Then it
// closes the ports and the forwards, removes the socket file and returns nil.
// A socket file left behind by a dead switch is replaced; one a live switch is
// listening on is an error.
func (s *Switch) Serve(ctx context.Context, socketPath string) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("network switch is already serving")
	}
	s.serving = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.serving = false
		s.mu.Unlock()
	}()

	ln, err := unixsock.Listen(socketPath)
	if err != nil {
		return fmt.Errorf("network switch: %w", err)
	}
	// Close removes the socket file (Go unlinks sockets it created).
	defer ln.Close()
	// Forwards are opened after the socket so that a second switch started
	// by mistake fails on the socket before touching the host's ports.
	exposed, err := s.exposeForwards()
	defer s.unexposeForwards(exposed)
	if err != nil {
		return err
	}
	s.log.Info("network: switch listening", "socket", socketPath, "subnet", s.cfg.Subnet, "gateway", s.cfg.GatewayIP)
	s.upOnce.Do(func() { close(s.up) })

	// Ports run under a context that also ends when Serve returns for any
	// other reason, so the wait below cannot hang on a live VMM.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.log.Info("network: switch stopping", "socket", socketPath)
				return nil
			}
			return fmt.Errorf("network switch: accept on %s: %w", socketPath, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Attach(ctx, conn)
		}()
	}
}

// exposeForwards starts the forwards one by one through gvisor-tap-vsock's
// forwarder API (in process, no HTTP listener), so they can be stopped at
// shutdown; the library has no other handle on them. It returns those
// started, even on error, for the caller to stop.
func (s *Switch) exposeForwards() ([]Forward, error) {
	var done []Forward
	for _, f := range s.cfg.Forwards {
		req := types.ExposeRequest{Local: f.Host, Remote: f.Guest, Protocol: types.TCP}
		if err := s.callService("/services/forwarder/expose", req); err != nil {
			return done, fmt.Errorf("network switch: forward %s: %w", f, err)
		}
		done = append(done, f)
		s.log.Info("network: forwarding", "host", f.Host, "guest", f.Guest)
	}
	return done, nil
}

func (s *Switch) unexposeForwards(fs []Forward) {
	for _, f := range fs {
		req := types.UnexposeRequest{Local: f.Host, Protocol: types.TCP}
		if err := s.callService("/services/forwarder/unexpose", req); err != nil {
			s.log.Warn("network: stop forward", "forward", f.String(), "err", err)
		}
	}
}

// callService POSTs body as JSON to the virtual network's services handler
// in process.
func (s *Switch) callService(path string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	var w responseRecorder
	s.services.ServeHTTP(&w, req)
	if w.code != 0 && w.code != http.StatusOK {
		return errors.New(strings.TrimSpace(w.body.String()))
	}
	return nil
}

// responseRecorder is the minimal http.ResponseWriter callService needs.
type responseRecorder struct {
	hdr  http.Header
	code int
	body bytes.Buffer
}

func (r *responseRecorder) Header() http.Header {
	if r.hdr == nil {
		r.hdr = http.Header{}
	}
	return r.hdr
}
func (r *responseRecorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *responseRecorder) WriteHeader(code int)        { r.code = code }

// Stats returns the bytes the switch has sent to and received from its
// ports.
func (s *Switch) Stats() (sent, received uint64) {
	return s.vn.BytesSent(), s.vn.BytesReceived()
}
