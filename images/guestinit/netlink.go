package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// rtnl is a minimal rtnetlink client: the three requests /init needs
// (link up, add address, add route), each acknowledged. It is written
// against x/sys/unix rather than a netlink library to keep /init small;
// every request is synchronous on the calling goroutine, so the socket
// belongs to that thread's network namespace (which tests rely on).
type rtnl struct {
	fd  int
	seq uint32
}

func dialRtnl() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &rtnl{fd: fd}, nil
}

func (c *rtnl) Close() error { return unix.Close(c.fd) }

// LinkUp sets IFF_UP on the interface with index idx.
func (c *rtnl) LinkUp(idx int) error {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:], uint32(idx))
	binary.NativeEndian.PutUint32(b[8:], unix.IFF_UP)  // flags
	binary.NativeEndian.PutUint32(b[12:], unix.IFF_UP) // change mask
	if err := c.do(unix.RTM_NEWLINK, 0, b); err != nil {
		return fmt.Errorf("set link %d up: %w", idx, err)
	}
	return nil
}

// AddAddr adds an IPv4 address with its prefix (and the subnet's broadcast
// address, as ip(8) does with "brd +"); an existing one is replaced.
func (c *rtnl) AddAddr(idx int, p netip.Prefix) error {
	b := []byte{unix.AF_INET, byte(p.Bits()), 0, unix.RT_SCOPE_UNIVERSE, 0, 0, 0, 0}
	binary.NativeEndian.PutUint32(b[4:], uint32(idx))
	a := p.Addr().As4()
	b = appendAttr(b, unix.IFA_LOCAL, a[:])
	b = appendAttr(b, unix.IFA_ADDRESS, a[:])
	if bc, ok := broadcast(p); ok {
		bb := bc.As4()
		b = appendAttr(b, unix.IFA_BROADCAST, bb[:])
	}
	if err := c.do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b); err != nil {
		return fmt.Errorf("add address %s to link %d: %w", p, idx, err)
	}
	return nil
}

// AddDefaultRoute makes gw on link idx the IPv4 default route.
func (c *rtnl) AddDefaultRoute(idx int, gw netip.Addr) error {
	b := []byte{
		unix.AF_INET, 0, 0, 0, // family, dst_len, src_len, tos
		unix.RT_TABLE_MAIN, unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST,
		0, 0, 0, 0, // flags
	}
	g := gw.As4()
	b = appendAttr(b, unix.RTA_GATEWAY, g[:])
	b = appendAttr(b, unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, uint32(idx)))
	if err := c.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b); err != nil {
		return fmt.Errorf("add default route via %s on link %d: %w", gw, idx, err)
	}
	return nil
}

// broadcast is the subnet's broadcast address; /31 and /32 have none.
func broadcast(p netip.Prefix) (netip.Addr, bool) {
	if !p.Addr().Is4() || p.Bits() >= 31 {
		return netip.Addr{}, false
	}
	a := p.Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v))), true
}

// appendAttr appends one rtattr, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofRtAttr+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// nlMessage frames body as one request that asks for an acknowledgement.
func nlMessage(typ, flags uint16, seq uint32, body []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(body)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel fills it in
	return append(b, body...)
}

// do sends one request and waits for its acknowledgement.
func (c *rtnl) do(typ, flags uint16, body []byte) error {
	c.seq++
	if err := unix.Sendto(c.fd, nlMessage(typ, flags, c.seq, body), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		done, err := parseAck(buf[:n], c.seq)
		if done {
			return err
		}
	}
}

// parseAck looks for the NLMSG_ERROR answering seq in a netlink datagram
// (error 0 is the acknowledgement). done is false if the datagram holds
// only other messages.
func parseAck(b []byte, seq uint32) (done bool, err error) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return true, fmt.Errorf("netlink reply: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
			continue
		}
		if len(m.Data) < 4 {
			return true, fmt.Errorf("netlink reply: short error message")
		}
		if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
			return true, unix.Errno(-errno)
		}
		return true, nil
	}
	return false, nil
}
