//go:build linux && amd64

package kvm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Memory is anonymous host memory suitable for backing guest RAM: mmap'd
// outside the Go heap, so the garbage collector never moves or scans it and
// its address can be handed to KVM for the lifetime of the VM.
type Memory struct {
	b []byte
}

// AllocateMemory maps size bytes of zeroed, page-aligned anonymous memory.
// Pages are reserved lazily (MAP_NORESERVE), so a large guest that touches
// little costs little.
func AllocateMemory(size int) (*Memory, error) {
	if size <= 0 || size%unix.Getpagesize() != 0 {
		return nil, fmt.Errorf("allocate guest memory: size %d is not a positive multiple of the page size %d", size, unix.Getpagesize())
	}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("allocate guest memory: mmap %d bytes: %w", size, err)
	}
	return &Memory{b: b}, nil
}

// Bytes returns the whole mapping. It is invalid after Close.
func (m *Memory) Bytes() []byte { return m.b }

// Len is the size of the mapping in bytes.
func (m *Memory) Len() int { return len(m.b) }

// Close unmaps the memory. The VM must no longer use it: remove its memory
// slot or close the VM first, or the guest keeps a dangling mapping.
func (m *Memory) Close() error {
	if m.b == nil {
		return nil
	}
	err := unix.Munmap(m.b)
	m.b = nil
	if err != nil {
		return fmt.Errorf("unmap guest memory: %w", err)
	}
	return nil
}
