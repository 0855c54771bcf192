package snapshot

import (
	"errors"
	"fmt"
	"io"

	"github.com/ftvm/ftvm/hypervisor/vm"
)

// Take writes a full snapshot of v to w and returns its Sum. v must not be
// in KVM_RUN: Run has returned, or this runs on the vCPU goroutine between
// exits (see vm.VM.SaveState). id is v's identity, as the caller built the
// VM (its memory size must be v's).
func Take(w io.Writer, v *vm.VM, id *Identity) (Sum, error) {
	return take(w, v, &Meta{Kind: Full, Identity: *id}, nil)
}

// TakeDelta writes a delta of v on top of base: the pages written marks
// (vm.VM.WrittenPages since base was taken) and the machine state now.
func TakeDelta(w io.Writer, v *vm.VM, id *Identity, base Sum, written []uint64) (Sum, error) {
	return take(w, v, &Meta{Kind: Delta, Base: base, Identity: *id}, written)
}

func take(w io.Writer, v *vm.VM, m *Meta, written []uint64) (Sum, error) {
	mem := v.Memory()
	if uint64(len(mem)) != uint64(m.Identity.MemoryMiB)<<20 {
		return Sum{}, fmt.Errorf("take snapshot: the identity says %d MiB, the VM has %d bytes", m.Identity.MemoryMiB, len(mem))
	}
	if err := v.SaveState(&m.State); err != nil {
		return Sum{}, fmt.Errorf("take snapshot: %w", err)
	}
	sw, err := NewWriter(w, m)
	if err != nil {
		return Sum{}, err
	}
	if m.Kind == Full {
		err = sw.Memory(mem)
	} else {
		err = sw.Pages(mem, written)
	}
	if err != nil {
		return Sum{}, err
	}
	return sw.Close()
}

// Restore makes v, a VM built from the same Config as the snapshot's
// machine and not yet run, go on from a snapshot: snaps is a full
// snapshot followed by any deltas, each on top of the one before it. own is
// v's identity; a snapshot of another machine is refused before anything
// is loaded, with a sentence naming the first difference. The machine
// state is the last snapshot's. It returns the last one's Sum. On an
// error v must not run (its memory or devices may be partly loaded).
func Restore(v *vm.VM, own *Identity, snaps ...io.Reader) (Sum, error) {
	if len(snaps) == 0 {
		return Sum{}, errors.New("restore snapshot: no snapshot given")
	}
	c, err := NewChain(v, own)
	if err != nil {
		return Sum{}, err
	}
	for _, s := range snaps {
		if _, err := c.Load(s); err != nil {
			return Sum{}, err
		}
	}
	return c.Finish()
}

// Chain loads a full snapshot and the deltas on top of it into a VM one
// at a time, as they arrive (a pre-copy's rounds over the log channel),
// then the last one's machine state. It checks what Restore checks.
type Chain struct {
	v     *vm.VM
	own   *Identity
	n     int
	last  Sum
	state vm.MachineState
}

// NewChain starts loading snapshots into v, a VM built from own's
// machine and not yet run.
func NewChain(v *vm.VM, own *Identity) (*Chain, error) {
	if uint64(len(v.Memory())) != uint64(own.MemoryMiB)<<20 {
		return nil, fmt.Errorf("restore snapshot: the identity says %d MiB, the VM has %d bytes", own.MemoryMiB, len(v.Memory()))
	}
	return &Chain{v: v, own: own}, nil
}

// Load reads the next snapshot of the chain from r into guest memory and
// returns its Sum. On an error the VM must not run.
func (c *Chain) Load(r io.Reader) (Sum, error) {
	c.n++
	sr, err := NewReader(r)
	if err != nil {
		return Sum{}, fmt.Errorf("restore snapshot %d: %w", c.n, err)
	}
	m := sr.Meta()
	if err := checkChain(c.n-1, m, c.last, c.own); err != nil {
		return Sum{}, err
	}
	if err := sr.LoadMemory(c.v.Memory()); err != nil {
		return Sum{}, fmt.Errorf("restore snapshot %d: %w", c.n, err)
	}
	c.last, _ = sr.Sum()
	c.state = m.State
	return c.last, nil
}

// Finish loads the last snapshot's machine state and returns its Sum.
func (c *Chain) Finish() (Sum, error) {
	if c.n == 0 {
		return Sum{}, errors.New("restore snapshot: no snapshot given")
	}
	if err := c.v.LoadState(&c.state); err != nil {
		return Sum{}, fmt.Errorf("restore snapshot: %w", err)
	}
	return c.last, nil
}

// checkChain refuses snapshot i of a chain (m) whose predecessor's Sum is
// last, before anything of it is loaded: the first must be full, each
// later one a delta of the one before, and all of this machine (own).
func checkChain(i int, m *Meta, last Sum, own *Identity) error {
	switch {
	case i == 0 && m.Kind != Full:
		return errors.New("restore snapshot: the first snapshot is a delta; give its base first")
	case i > 0 && m.Kind != Delta:
		return fmt.Errorf("restore snapshot %d: a full snapshot where a delta of %v belongs", i+1, last)
	case i > 0 && m.Base != last:
		return fmt.Errorf("restore snapshot %d: a delta of %v, not of the snapshot before it (%v)", i+1, m.Base, last)
	}
	if err := m.Identity.Check(own); err != nil {
		return fmt.Errorf("restore snapshot %d: %w", i+1, err)
	}
	return nil
}
