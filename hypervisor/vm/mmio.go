package vm

import (
	"fmt"
	"sort"

	"github.com/ftvm/ftvm/hypervisor/devices"
)

// mmioBus routes guest accesses to unbacked physical addresses (KVM's MMIO
// exits) to the device whose window holds them. Windows never overlap, so a
// binary search over sorted bases finds the device without allocating.
type mmioBus struct {
	windows []mmioWindow
}

type mmioWindow struct {
	base, size uint64
	dev        devices.MMIODevice
}

func (b *mmioBus) register(base, size uint64, dev devices.MMIODevice) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("MMIO window %#x+%#x is empty or wraps", base, size)
	}
	for _, w := range b.windows {
		if base < w.base+w.size && w.base < base+size {
			return fmt.Errorf("MMIO window %#x+%#x overlaps %#x+%#x", base, size, w.base, w.size)
		}
	}
	b.windows = append(b.windows, mmioWindow{base, size, dev})
	sort.Slice(b.windows, func(i, j int) bool { return b.windows[i].base < b.windows[j].base })
	return nil
}

// find returns the device whose window holds addr.
func (b *mmioBus) find(addr uint64) devices.MMIODevice {
	i := sort.Search(len(b.windows), func(i int) bool { return b.windows[i].base+b.windows[i].size > addr })
	if i < len(b.windows) && b.windows[i].base <= addr {
		return b.windows[i].dev
	}
	return nil
}
