package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// A DHCPv4 client (RFC 2131) just big enough for a guest on
// gvisor-tap-vsock's switch or QEMU's user network: DISCOVER, OFFER,
// REQUEST, ACK, nothing else. There is no renewal: the address is kept
// for the life of the VM (gvisor-tap-vsock assigns by MAC and keeps it).
//
// It uses an ordinary UDP socket bound to eth0 (SO_BINDTODEVICE) on port
// 68, which Linux lets send to 255.255.255.255 before the interface has an
// address. To receive the answers before it has one either, the requests
// set the BROADCAST flag, so servers broadcast their replies instead of
// unicasting them to an address the kernel does not have yet.

const (
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5
	dhcpNak      = 6

	optPad          = 0
	optSubnetMask   = 1
	optRouter       = 3
	optDNS          = 6
	optRequestedIP  = 50
	optMessageType  = 53
	optServerID     = 54
	optParamRequest = 55
	optEnd          = 255

	dhcpFixedLen = 236 // op .. file, before the magic cookie
)

var dhcpMagic = []byte{99, 130, 83, 99}

// dhcpMsg is the part of a DHCP message the client reads or writes.
type dhcpMsg struct {
	Op      byte
	XID     uint32
	Flags   uint16
	YIAddr  netip.Addr
	CHAddr  net.HardwareAddr
	Options map[byte][]byte
}

// Lease is what the client got.
type Lease struct {
	Addr   netip.Prefix
	Router netip.Addr // zero if the server sent none
	DNS    []netip.Addr
	Server netip.Addr
}

// encodeDHCP builds a client message. Options are written in ascending
// code order so the bytes do not depend on map iteration.
func encodeDHCP(m dhcpMsg) []byte {
	b := make([]byte, dhcpFixedLen, 300)
	b[0], b[1], b[2] = m.Op, 1, 6 // op, htype Ethernet, hlen
	binary.BigEndian.PutUint32(b[4:], m.XID)
	binary.BigEndian.PutUint16(b[10:], m.Flags)
	copy(b[28:44], m.CHAddr)
	b = append(b, dhcpMagic...)
	for code := range 255 {
		if v, ok := m.Options[byte(code)]; ok && code != optPad {
			b = append(b, byte(code), byte(len(v)))
			b = append(b, v...)
		}
	}
	b = append(b, optEnd)
	for len(b) < 300 { // BOOTP minimum; some servers drop shorter packets
		b = append(b, optPad)
	}
	return b
}

// parseDHCP decodes a message; it never trusts a length it has not checked.
func parseDHCP(b []byte) (dhcpMsg, error) {
	if len(b) < dhcpFixedLen+len(dhcpMagic) {
		return dhcpMsg{}, fmt.Errorf("dhcp message of %d bytes is too short", len(b))
	}
	if !bytes.Equal(b[dhcpFixedLen:dhcpFixedLen+4], dhcpMagic) {
		return dhcpMsg{}, errors.New("dhcp message lacks the magic cookie")
	}
	hlen := int(b[2])
	if hlen > 16 {
		return dhcpMsg{}, fmt.Errorf("dhcp hardware address length %d > 16", hlen)
	}
	m := dhcpMsg{
		Op:      b[0],
		XID:     binary.BigEndian.Uint32(b[4:]),
		Flags:   binary.BigEndian.Uint16(b[10:]),
		YIAddr:  netip.AddrFrom4([4]byte(b[16:20])),
		CHAddr:  net.HardwareAddr(bytes.Clone(b[28 : 28+hlen])),
		Options: map[byte][]byte{},
	}
	opts := b[dhcpFixedLen+4:]
	for i := 0; i < len(opts); {
		code := opts[i]
		if code == optEnd {
			break
		}
		if code == optPad {
			i++
			continue
		}
		if i+1 >= len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return dhcpMsg{}, fmt.Errorf("dhcp option %d runs past the end of the message", code)
		}
		v := opts[i+2 : i+2+int(opts[i+1])]
		// RFC 3396: a repeated option is concatenated.
		m.Options[code] = append(m.Options[code], v...)
		i += 2 + len(v)
	}
	return m, nil
}

// msgType is option 53, 0 if absent or malformed.
func (m dhcpMsg) msgType() byte {
	if v := m.Options[optMessageType]; len(v) == 1 {
		return v[0]
	}
	return 0
}

// addrOpt is the first IPv4 address of an option.
func (m dhcpMsg) addrOpt(code byte) (netip.Addr, bool) {
	if v := m.Options[code]; len(v) >= 4 {
		return netip.AddrFrom4([4]byte(v[:4])), true
	}
	return netip.Addr{}, false
}

// lease turns an ACK into a Lease. Without a subnet mask option the
// address is taken as a /24, the size of every network ftvm sets up.
func (m dhcpMsg) lease() (Lease, error) {
	if !m.YIAddr.Is4() || m.YIAddr.IsUnspecified() {
		return Lease{}, errors.New("dhcp ack without an address")
	}
	bits := 24
	if v := m.Options[optSubnetMask]; len(v) == 4 {
		ones, size := net.IPMask(v).Size()
		if size != 32 || ones == 0 {
			return Lease{}, fmt.Errorf("dhcp subnet mask %v is not a prefix", net.IP(v))
		}
		bits = ones
	}
	l := Lease{Addr: netip.PrefixFrom(m.YIAddr, bits)}
	l.Router, _ = m.addrOpt(optRouter)
	l.Server, _ = m.addrOpt(optServerID)
	v := m.Options[optDNS]
	for i := 0; i+4 <= len(v); i += 4 {
		l.DNS = append(l.DNS, netip.AddrFrom4([4]byte(v[i:i+4])))
	}
	return l, nil
}

// dhcpXID derives the transaction id from the MAC: a guest under replay
// must not depend on randomness, and one client per MAC needs no more.
func dhcpXID(mac net.HardwareAddr) uint32 {
	return crc32.ChecksumIEEE(mac) | 1
}

func clientMsg(typ byte, mac net.HardwareAddr, extra map[byte][]byte) []byte {
	opts := map[byte][]byte{
		optMessageType:  {typ},
		optParamRequest: {optSubnetMask, optRouter, optDNS},
	}
	for k, v := range extra {
		opts[k] = v
	}
	return encodeDHCP(dhcpMsg{Op: 1, XID: dhcpXID(mac), Flags: 0x8000, CHAddr: mac, Options: opts})
}

// dhcpConn is the client's UDP socket on one interface.
type dhcpConn struct{ fd int }

func dialDHCP(ifname string) (*dhcpConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("dhcp socket: %w", err)
	}
	c := &dhcpConn{fd}
	for _, step := range []func() error{
		func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) },
		func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1) },
		func() error { return unix.BindToDevice(fd, ifname) },
		func() error { return unix.Bind(fd, &unix.SockaddrInet4{Port: 68}) },
	} {
		if err := step(); err != nil {
			c.Close()
			return nil, fmt.Errorf("dhcp socket on %s: %w", ifname, err)
		}
	}
	return c, nil
}

func (c *dhcpConn) Close() error { return unix.Close(c.fd) }

func (c *dhcpConn) send(b []byte) error {
	err := unix.Sendto(c.fd, b, 0, &unix.SockaddrInet4{Port: 67, Addr: [4]byte{255, 255, 255, 255}})
	if err != nil {
		return fmt.Errorf("dhcp send: %w", err)
	}
	return nil
}

// recv waits until deadline for a reply of type want to our xid and MAC,
// skipping anything else on the wire (other clients' traffic, stray
// offers). A NAK is returned as an error.
func (c *dhcpConn) recv(deadline time.Time, mac net.HardwareAddr, want byte) (dhcpMsg, bool, error) {
	buf := make([]byte, 1500)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return dhcpMsg{}, false, nil
		}
		fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(wait.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return dhcpMsg{}, false, fmt.Errorf("dhcp poll: %w", err)
		}
		if n == 0 {
			continue
		}
		n, _, err = unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return dhcpMsg{}, false, fmt.Errorf("dhcp receive: %w", err)
		}
		m, err := parseDHCP(buf[:n])
		if err != nil || m.Op != 2 || m.XID != dhcpXID(mac) || !bytes.Equal(m.CHAddr, mac) {
			continue
		}
		switch m.msgType() {
		case want:
			return m, true, nil
		case dhcpNak:
			return dhcpMsg{}, false, errors.New("dhcp server sent NAK")
		}
	}
}

// dhcpAcquire runs DISCOVER/OFFER/REQUEST/ACK on ifname until it gets a
// lease or ctx ends, resending every attempt (1s, doubling up to 4s).
func dhcpAcquire(ctx context.Context, ifname string, mac net.HardwareAddr) (Lease, error) {
	c, err := dialDHCP(ifname)
	if err != nil {
		return Lease{}, err
	}
	defer c.Close()
	attempt := time.Second
	var last error = errors.New("no offer")
	for ctx.Err() == nil {
		l, err := dhcpExchange(ctx, c, mac, attempt)
		if err == nil {
			return l, nil
		}
		last = err
		attempt = min(2*attempt, 4*time.Second)
	}
	return Lease{}, fmt.Errorf("dhcp on %s: no lease (%v)", ifname, last)
}

// dhcpExchange is one DISCOVER..ACK round with wait for each reply.
func dhcpExchange(ctx context.Context, c *dhcpConn, mac net.HardwareAddr, wait time.Duration) (Lease, error) {
	deadline := func() time.Time {
		d := time.Now().Add(wait)
		if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
			return cd
		}
		return d
	}
	if err := c.send(clientMsg(dhcpDiscover, mac, nil)); err != nil {
		return Lease{}, err
	}
	offer, ok, err := c.recv(deadline(), mac, dhcpOffer)
	if err != nil || !ok {
		return Lease{}, errors.Join(errors.New("no offer"), err)
	}
	server, hasServer := offer.addrOpt(optServerID)
	ip := offer.YIAddr.As4()
	extra := map[byte][]byte{optRequestedIP: ip[:]}
	if hasServer {
		s := server.As4()
		extra[optServerID] = s[:]
	}
	if err := c.send(clientMsg(dhcpRequest, mac, extra)); err != nil {
		return Lease{}, err
	}
	ack, ok, err := c.recv(deadline(), mac, dhcpAck)
	if err != nil || !ok {
		return Lease{}, errors.Join(fmt.Errorf("no ack for %s", offer.YIAddr), err)
	}
	return ack.lease()
}
