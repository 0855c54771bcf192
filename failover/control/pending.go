package control

import (
	"os"
	"sync/atomic"
)

// Pending is a side's Source before the side exists: a VMM listens on its
// control socket first (a bad path fails before a VM is built, and a
// supervisor can watch it start), then hands over its real source.
type Pending struct {
	role    string
	src     atomic.Pointer[Source]
	protect protectors
	// snapshot is what POST /snapshot runs (nil: nothing can be).
	snapshot atomic.Pointer[Snapshotter]
}

// NewPending reports role in phase "starting" until Set.
func NewPending(role string) *Pending { return &Pending{role: role} }

// Set makes src answer from now on.
func (p *Pending) Set(src Source) { p.src.Store(&src) }

// Status asks the source Set gave, or says the side is starting.
func (p *Pending) Status() Status {
	if src := p.src.Load(); src != nil {
		return (*src).Status()
	}
	return Status{Role: p.role, PID: os.Getpid(), Phase: "starting", State: "starting: building the VM, or waiting for the other side"}
}
