package network

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
)

// Hand-built frames for the switch and tap tests. Only what the tests need:
// Ethernet II, ARP for IPv4, IPv4 with ICMP echo and UDP.

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeTest = 0x88b5 // IEEE local experimental: nothing on a host reacts to it
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ethernet(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 0, 14+len(payload))
	f = append(f, dst...)
	f = append(f, src...)
	f = binary.BigEndian.AppendUint16(f, etherType)
	return append(f, payload...)
}

// arp builds an ARP packet for IPv4 over Ethernet (op 1 request, 2 reply).
func arp(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	p := []byte{0, 1, 8, 0, 6, 4}
	p = binary.BigEndian.AppendUint16(p, op)
	p = append(p, sha...)
	p = append(p, spa.AsSlice()...)
	p = append(p, tha...)
	return append(p, tpa.AsSlice()...)
}

type arpPacket struct {
	op       uint16
	sha, tha net.HardwareAddr
	spa, tpa netip.Addr
}

func parseARP(frame []byte) (arpPacket, bool) {
	if len(frame) < 14+28 || binary.BigEndian.Uint16(frame[12:]) != etherTypeARP {
		return arpPacket{}, false
	}
	p := frame[14:]
	spa, _ := netip.AddrFromSlice(p[14:18])
	tpa, _ := netip.AddrFromSlice(p[24:28])
	return arpPacket{
		op:  binary.BigEndian.Uint16(p[6:]),
		sha: net.HardwareAddr(p[8:14]), spa: spa,
		tha: net.HardwareAddr(p[18:24]), tpa: tpa,
	}, true
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func ipv4(proto byte, src, dst netip.Addr, payload []byte) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h[8] = 64
	h[9] = proto
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, payload...)
}

func icmpEcho(id, seq uint16, data []byte) []byte {
	p := []byte{8, 0, 0, 0}
	p = binary.BigEndian.AppendUint16(p, id)
	p = binary.BigEndian.AppendUint16(p, seq)
	p = append(p, data...)
	binary.BigEndian.PutUint16(p[2:], checksum(p))
	return p
}

// udp builds a UDP datagram with checksum 0 (none), which IPv4 allows.
func udp(srcPort, dstPort uint16, payload []byte) []byte {
	p := binary.BigEndian.AppendUint16(nil, srcPort)
	p = binary.BigEndian.AppendUint16(p, dstPort)
	p = binary.BigEndian.AppendUint16(p, uint16(8+len(payload)))
	p = append(p, 0, 0)
	return append(p, payload...)
}

type ipPacket struct {
	proto    byte
	src, dst netip.Addr
	payload  []byte
}

func parseIPv4(frame []byte) (ipPacket, bool) {
	if len(frame) < 34 || binary.BigEndian.Uint16(frame[12:]) != etherTypeIPv4 || frame[14]>>4 != 4 {
		return ipPacket{}, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total < ihl || total > len(ip) {
		return ipPacket{}, false
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	return ipPacket{proto: ip[9], src: src, dst: dst, payload: ip[ihl:total]}, true
}

func macEqual(a, b net.HardwareAddr) bool { return bytes.Equal(a, b) }
