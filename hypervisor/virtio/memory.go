package virtio

import (
	"encoding/binary"
	"fmt"
)

// Memory is a bounds-checked view of guest RAM for device models. It owns
// nothing: it borrows the VM's RAM slice (guest-physical address 0 is
// index 0, RAM is one contiguous region) and every access is checked
// against that slice, so no guest-supplied address or length can make a
// device touch host memory outside it.
type Memory struct {
	ram []byte
	// dirty, when tracking, has a bit per 4 KiB page a device may have
	// written (bit i of word i/64 is page i): KVM's dirty log sees only
	// the guest's own writes, and replication must see these too.
	dirty []uint64
}

// dirtyPageShift: dirty tracking works in 4 KiB pages, like KVM's log.
const dirtyPageShift = 12

// TrackDirty starts recording the pages devices write.
func (m *Memory) TrackDirty() {
	if m.dirty == nil {
		m.dirty = make([]uint64, (len(m.ram)>>dirtyPageShift+64)/64)
	}
}

// MarkDirty records that [addr, addr+length) may have been written. It
// does nothing unless tracking; the range must be inside RAM.
func (m *Memory) MarkDirty(addr, length uint64) {
	if m.dirty == nil || length == 0 {
		return
	}
	for p := addr >> dirtyPageShift; p <= (addr+length-1)>>dirtyPageShift; p++ {
		m.dirty[p/64] |= 1 << (p % 64)
	}
}

// TakeDirty ORs the pages written since the last call into bitmap (which
// must have a bit per page of RAM) and forgets them.
func (m *Memory) TakeDirty(bitmap []uint64) {
	for i, w := range m.dirty {
		if w != 0 && i < len(bitmap) {
			bitmap[i] |= w
			m.dirty[i] = 0
		}
	}
}

// NewMemory wraps the guest RAM slice. The slice must stay valid (mapped)
// for as long as the Memory and anything returned by Slice is used.
func NewMemory(ram []byte) *Memory { return &Memory{ram: ram} }

// Size is the number of bytes of guest RAM.
func (m *Memory) Size() uint64 { return uint64(len(m.ram)) }

// RangeError reports a guest-physical range outside guest RAM (or one
// whose end does not fit in 64 bits).
type RangeError struct {
	Addr, Len uint64
	Size      uint64 // guest RAM size
}

func (e *RangeError) Error() string {
	if e.Addr+e.Len < e.Addr {
		return fmt.Sprintf("guest range %#x+%#x overflows", e.Addr, e.Len)
	}
	return fmt.Sprintf("guest range [%#x, %#x) outside guest RAM of %#x bytes", e.Addr, e.Addr+e.Len, e.Size)
}

// Slice returns guest RAM [addr, addr+length) without copying; writes to
// it are writes to guest memory. It fails if the range wraps around the
// address space or does not lie entirely inside RAM. A zero-length range
// is valid anywhere up to and including the end of RAM.
func (m *Memory) Slice(addr, length uint64) ([]byte, error) {
	size := uint64(len(m.ram))
	// Written as two comparisons that cannot overflow: addr <= size, then
	// length <= size-addr (which also rejects addr+length wrapping).
	if addr > size || length > size-addr {
		return nil, &RangeError{Addr: addr, Len: length, Size: size}
	}
	// Full slice expression: an append by a device on the returned slice
	// can never spill into guest memory past the range.
	return m.ram[addr : addr+length : addr+length], nil
}

// Read copies guest RAM at addr into p.
func (m *Memory) Read(addr uint64, p []byte) error {
	b, err := m.Slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, b)
	return nil
}

// Write copies p into guest RAM at addr.
func (m *Memory) Write(addr uint64, p []byte) error {
	b, err := m.Slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(b, p)
	m.MarkDirty(addr, uint64(len(p)))
	return nil
}

// Uint16 reads a little-endian uint16 at addr.
func (m *Memory) Uint16(addr uint64) (uint16, error) {
	b, err := m.Slice(addr, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

// Uint32 reads a little-endian uint32 at addr.
func (m *Memory) Uint32(addr uint64) (uint32, error) {
	b, err := m.Slice(addr, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

// Uint64 reads a little-endian uint64 at addr.
func (m *Memory) Uint64(addr uint64) (uint64, error) {
	b, err := m.Slice(addr, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// PutUint16 writes v little-endian at addr.
func (m *Memory) PutUint16(addr uint64, v uint16) error {
	b, err := m.Slice(addr, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(b, v)
	m.MarkDirty(addr, 2)
	return nil
}

// PutUint32 writes v little-endian at addr.
func (m *Memory) PutUint32(addr uint64, v uint32) error {
	b, err := m.Slice(addr, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b, v)
	m.MarkDirty(addr, 4)
	return nil
}

// PutUint64 writes v little-endian at addr.
func (m *Memory) PutUint64(addr uint64, v uint64) error {
	b, err := m.Slice(addr, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(b, v)
	m.MarkDirty(addr, 8)
	return nil
}
