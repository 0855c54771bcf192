package vm

import (
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"golang.org/x/sys/unix"
)

// Guest RAM is one KVM memory slot at guest-physical address 0 (see New).
const (
	ramSlot      = 0
	ramGuestPhys = 0
)

// DirtyPageSize is the granularity of DirtyPages: bit i of the bitmap
// stands for guest-physical bytes [i*DirtyPageSize, (i+1)*DirtyPageSize).
const DirtyPageSize = 4096

// EnableDirtyLog starts tracking which pages of guest RAM the guest writes
// (KVM_MEM_LOG_DIRTY_PAGES on the RAM slot, which KVM lets a VMM turn on by
// registering the slot again with only the flags changed). The log starts
// empty: pages written before, by the guest or by the VMM loading it, are
// not in it, so a checkpoint copies all of RAM once and then the deltas.
//
// KVM then maps guest RAM with 4 KiB pages and write-protects them again
// at each DirtyPages, so a guest that writes a lot runs slower while the
// log is on. It may be called while the guest runs.
func (v *VM) EnableDirtyLog() error {
	if err := v.kvmVM.SetUserMemoryRegion(ramSlot, ramGuestPhys, v.mem.Bytes(), kvm.MemLogDirtyPages); err != nil {
		return fmt.Errorf("enable dirty-page logging: %w", err)
	}
	return nil
}

// DisableDirtyLog stops the tracking EnableDirtyLog started.
func (v *VM) DisableDirtyLog() error {
	if err := v.kvmVM.SetUserMemoryRegion(ramSlot, ramGuestPhys, v.mem.Bytes(), 0); err != nil {
		return fmt.Errorf("disable dirty-page logging: %w", err)
	}
	return nil
}

// DirtyPages returns the bitmap of the guest RAM pages the guest wrote
// since the previous call (or since EnableDirtyLog): bit i of word i/64 is
// page i (see DirtyPageSize). KVM clears its log as it hands it over
// (KVM_GET_DIRTY_LOG), so each write is reported once. The bitmap is
// written into into when it is large enough (one bit per page of Memory),
// so a pre-copy loop can reuse one buffer.
//
// The bitmap may hold more than the pages written: a page the guest
// touches for the first time since KVM mapped it (its first access after
// EnableDirtyLog, or after the host reclaimed or moved it) is reported
// even if the access was a read, because KVM maps it writable at once and
// counts it then. After a DirtyPages, KVM write-protects what it reported,
// so a page only read from then on is not reported again. A checkpoint
// needs a superset, which this is.
//
// Only writes through the guest's own mappings are logged: the guest's
// instructions and what KVM writes for it (emulated instructions, string
// I/O into memory). Writes the VMM makes through its own mapping of guest
// memory, Memory() (the virtio devices' DMA: received frames, disk reads,
// used rings), are not in KVM's log; whoever ships pages must add those.
//
// It may be called while the guest runs; the result is then a snapshot
// that the guest may have written to further since.
func (v *VM) DirtyPages(into []uint64) ([]uint64, error) {
	bm, err := v.kvmVM.GetDirtyLog(ramSlot, into)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("read dirty-page log: logging is off (call EnableDirtyLog first): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("read dirty-page log: %w", err)
	}
	return bm, nil
}
