package replay

import (
	"fmt"
	"math/bits"

	"github.com/ftvm/ftvm/hypervisor/vm"
)

// stateTracker follows guest memory on one side of a pair for digests and
// checkpoints. KVM's dirty log is read-and-clear, so it is read in one place
// and its bits fanned out: to the pages the next digest must rehash, and
// (on the primary) to the pages the next checkpoint must carry and to those
// written since the sides last held the same memory.
type stateTracker struct {
	hasher      *MemoryHasher
	fetched     []uint64 // the latest dirty bitmap, reused
	digestDirty []uint64 // pages written since the last digest
	ckptDirty   []uint64 // pages written since the last checkpoint (primary)
	// sinceSync: pages written since the last sync point (primary), where
	// the backup, replaying, holds the same memory: the recorder clears it
	// there (see Recorder.syncPoint). Only these pages of a checkpoint
	// must travel with their content.
	sinceSync []uint64
	cpu       vm.CPUState
}

// init hashes all of memory once (the first digest or checkpoint).
func (t *stateTracker) init(g vm.GuestState) {
	if t.hasher != nil {
		return
	}
	mem := g.Memory()
	t.hasher = NewMemoryHasher(mem)
	words := (t.hasher.Pages() + 63) / 64
	t.digestDirty = make([]uint64, words)
	t.ckptDirty = make([]uint64, words)
	t.sinceSync = make([]uint64, words)
}

// collect reads the pages written since the last call into both sets.
// Everything since power-on counts for the first checkpoint: the backup
// started from the same memory, and the log began with dirty logging on.
func (t *stateTracker) collect(g vm.GuestState) error {
	t.init(g)
	var err error
	if t.fetched, err = g.WrittenPages(t.fetched); err != nil {
		return fmt.Errorf("read dirty pages: %w", err)
	}
	for i, w := range t.fetched {
		if i >= len(t.digestDirty) {
			if w != 0 {
				return fmt.Errorf("dirty bitmap word %d beyond the %d-page memory", i, t.hasher.Pages())
			}
			continue
		}
		t.digestDirty[i] |= w
		t.ckptDirty[i] |= w
		t.sinceSync[i] |= w
	}
	return nil
}

// markWritten notes pages the replication layer itself wrote (a loaded
// checkpoint), which no dirty log reports.
func (t *stateTracker) markWritten(addr int64) {
	p := addr / PageSize
	t.digestDirty[p/64] |= 1 << (p % 64)
}

// digest returns the register and memory digests of the guest now.
func (t *stateTracker) digest(g vm.GuestState) (regs, mem [32]byte, err error) {
	if err := t.collect(g); err != nil {
		return regs, mem, err
	}
	if err := t.hasher.UpdateBitmap(t.digestDirty); err != nil {
		return regs, mem, err
	}
	clear(t.digestDirty)
	if err := g.CaptureCPU(&t.cpu); err != nil {
		return regs, mem, fmt.Errorf("read vCPU state: %w", err)
	}
	return RegsDigest(&t.cpu.Regs, &t.cpu.Sregs, nil), t.hasher.Sum(), nil
}

func trailingZeros(w uint64) int { return bits.TrailingZeros64(w) }
