//go:build linux && amd64

package kvm

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VM is one KVM virtual machine: its memory slots and vCPUs.
type VM struct {
	fd       int
	mmapSize int

	// mu guards slotSize only; it is never taken on the vCPU run path.
	mu       sync.Mutex
	slotSize map[uint32]uint64
}

// CreateVM creates an empty VM (KVM_CREATE_VM, default machine type).
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: KVM_CREATE_VM: %w", s.path, err)
	}
	// The kernel doesn't set close-on-exec on fds it creates by ioctl.
	unix.CloseOnExec(fd)
	return &VM{fd: fd, mmapSize: s.mmapSize, slotSize: map[uint32]uint64{}}, nil
}

// Close closes the VM's descriptor. The kernel frees the VM once its vCPUs
// are closed too; guest memory is the caller's to unmap afterwards.
func (vm *VM) Close() error {
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	if err != nil {
		return fmt.Errorf("close VM: %w", err)
	}
	return nil
}

// SetUserMemoryRegion maps mem at guest physical address guestPhys in slot
// (KVM_SET_USER_MEMORY_REGION). mem must be page-aligned host memory that
// outlives the mapping, e.g. from AllocateMemory; an empty mem deletes the
// slot. flags is a combination of MemLogDirtyPages and MemReadonly.
func (vm *VM) SetUserMemoryRegion(slot uint32, guestPhys uint64, mem []byte, flags uint32) error {
	r := userspaceMemoryRegion{Slot: slot, Flags: flags, GuestPhysAddr: guestPhys, MemorySize: uint64(len(mem))}
	if len(mem) > 0 {
		r.UserspaceAddr = uint64(uintptr(unsafe.Pointer(&mem[0])))
	}
	if _, err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d at %#x size %#x: %w", slot, guestPhys, len(mem), err)
	}
	vm.mu.Lock()
	if len(mem) == 0 {
		delete(vm.slotSize, slot)
	} else {
		vm.slotSize[slot] = uint64(len(mem))
	}
	vm.mu.Unlock()
	return nil
}

// SetTSSAddr places the three pages Intel VMX needs for real-mode emulation
// (KVM_SET_TSS_ADDR); the range must not overlap guest RAM or MMIO. AMD
// ignores it, so a VMM calls it unconditionally.
func (vm *VM) SetTSSAddr(addr uint32) error {
	if _, err := ioctl(vm.fd, kvmSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the page Intel VMX uses for the identity page
// table of unpaged protected mode (KVM_SET_IDENTITY_MAP_ADDR). Call it before
// creating vCPUs.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(vm.fd, kvmSetIdentityMapAddr, unsafe.Pointer(&addr)); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// GetDirtyLog returns the slot's dirty-page bitmap, one bit per 4 KiB page
// (bit i of word i/64 for page i), and atomically clears it in the kernel
// (KVM_GET_DIRTY_LOG). The slot must have been set with MemLogDirtyPages.
// The bitmap is written into dst if it is large enough, so a pre-copy loop
// can reuse one buffer.
func (vm *VM) GetDirtyLog(slot uint32, dst []uint64) ([]uint64, error) {
	vm.mu.Lock()
	size, ok := vm.slotSize[slot]
	vm.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: no such slot", slot)
	}
	words := int((size/4096 + 63) / 64)
	if cap(dst) < words {
		dst = make([]uint64, words)
	}
	dst = dst[:words]
	d := dirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&dst[0])))}
	if _, err := ioctlPtr(vm.fd, kvmGetDirtyLog, unsafe.Pointer(&d)); err != nil {
		return nil, fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w", slot, err)
	}
	return dst, nil
}
