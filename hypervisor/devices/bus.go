package devices

import (
	"fmt"
	"sort"
)

// PortRange is a contiguous range of I/O ports, [Base, Base+Size).
type PortRange struct {
	Base uint16
	Size uint16
}

// end is one past the last port; uint32 because a range may end at 0x10000.
func (r PortRange) end() uint32 { return uint32(r.Base) + uint32(r.Size) }

func (r PortRange) String() string {
	return fmt.Sprintf("%#x-%#x", r.Base, r.end()-1)
}

type busEntry struct {
	PortRange
	dev PortDevice
}

// PortBus models the machine's ISA-style I/O space: it routes the guest's
// IN/OUT to the device that claimed the port, and behaves like an open ISA
// bus elsewhere (reads float to all-ones, writes vanish).
//
// An access is routed by its first port: x86 port I/O from Linux is
// naturally aligned and never straddles two devices, and real ISA decoding
// would not split it sensibly either.
//
// PortBus is not safe for concurrent use; like every device model it
// belongs to the vCPU exit loop.
type PortBus struct {
	// entries is sorted by Base and non-overlapping, so a lookup is a
	// binary search with no allocation on the exit path.
	entries   []busEntry
	unclaimed map[uint16]uint64
}

// NewPortBus returns an empty bus.
func NewPortBus() *PortBus {
	return &PortBus{unclaimed: make(map[uint16]uint64)}
}

// Register claims ports [base, base+size) for dev. It fails if the range is
// empty, runs past port 0xffff, or overlaps a range already claimed.
func (b *PortBus) Register(base, size uint16, dev PortDevice) error {
	r := PortRange{Base: base, Size: size}
	if dev == nil {
		return fmt.Errorf("devices: register ports %v: nil device", r)
	}
	if size == 0 {
		return fmt.Errorf("devices: register ports at %#x: empty range", base)
	}
	if r.end() > 0x10000 {
		return fmt.Errorf("devices: register ports %#x+%d: past port 0xffff", base, size)
	}
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].end() > uint32(base) })
	if i < len(b.entries) && uint32(b.entries[i].Base) < r.end() {
		return fmt.Errorf("devices: register ports %v (%T): overlaps %v (%T)",
			r, dev, b.entries[i].PortRange, b.entries[i].dev)
	}
	b.entries = append(b.entries, busEntry{})
	copy(b.entries[i+1:], b.entries[i:])
	b.entries[i] = busEntry{PortRange: r, dev: dev}
	return nil
}

// RegisterRanges claims every range for dev, or none of them if any fails.
func (b *PortBus) RegisterRanges(dev PortDevice, ranges ...PortRange) error {
	saved := append([]busEntry(nil), b.entries...)
	for _, r := range ranges {
		if err := b.Register(r.Base, r.Size, dev); err != nil {
			b.entries = saved
			return err
		}
	}
	return nil
}

// lookup is on the exit path: no closures, no allocation.
func (b *PortBus) lookup(port uint16) PortDevice {
	lo, hi := 0, len(b.entries)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		e := &b.entries[m]
		switch {
		case port < e.Base:
			hi = m
		case uint32(port) >= e.end():
			lo = m + 1
		default:
			return e.dev
		}
	}
	return nil
}

// Read performs a guest IN of len(data) bytes from port.
func (b *PortBus) Read(port uint16, data []byte) {
	if dev := b.lookup(port); dev != nil {
		dev.ReadPort(port, data)
		return
	}
	b.unclaimed[port]++
	for i := range data {
		data[i] = 0xff
	}
}

// Write performs a guest OUT of data to port.
func (b *PortBus) Write(port uint16, data []byte) {
	if dev := b.lookup(port); dev != nil {
		dev.WritePort(port, data)
		return
	}
	b.unclaimed[port]++
}

// Unclaimed returns, for diagnostics, how many accesses each unclaimed port
// received. The map is a copy.
func (b *PortBus) Unclaimed() map[uint16]uint64 {
	m := make(map[uint16]uint64, len(b.unclaimed))
	for p, n := range b.unclaimed {
		m[p] = n
	}
	return m
}

// Ranges lists the claimed ranges in port order, for diagnostics.
func (b *PortBus) Ranges() []PortRange {
	rs := make([]PortRange, len(b.entries))
	for i, e := range b.entries {
		rs[i] = e.PortRange
	}
	return rs
}
