package vm

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// exitRequests is work other goroutines hand the vCPU goroutine to do
// between two KVM_RUN calls (AtExit). The exit path reads only pending, an
// atomic; the mutex is taken on the rare path of a request.
type exitRequests struct {
	pending atomic.Bool
	// wake ends a halt's wait so a halted guest serves requests too.
	wake chan struct{}

	mu sync.Mutex
	// running: run is between its start and its end, so queued requests
	// are served by the loop; kicker is its vCPU's (nil outside run).
	running bool
	kicker  *kvm.Kicker
	queue   []*exitRequest
}

type exitRequest struct {
	fn   func() error
	done chan error
	// running: serve it only where the guest runs on next, never inside
	// a halt (see AtRunningExit).
	running bool
}

// AtExit runs fn on the vCPU goroutine between two exits, when the vCPU is
// not in KVM_RUN, and returns its error: the point where the machine's
// state can be saved (SaveState, a snapshot) while it runs. If Run is
// running, the vCPU is kicked out of the guest and fn runs before it goes
// back in; a halted guest stays halted. If Run is not running, fn runs
// here at once. fn must not call AtExit. The guest clock runs on while fn
// runs, as it does during a host pause.
//
// On a VM that records for a backup, the kick is a point the backup cannot
// find by counting exits, so the recorder ships a checkpoint there as for
// any kick. ctx bounds the wait for the loop; a request already taken by
// the loop is waited for.
func (v *VM) AtExit(ctx context.Context, fn func() error) error {
	return v.atExit(ctx, fn, false)
}

// AtRunningExit is AtExit at an exit after which the guest runs on: a
// halted guest leaves HLT first (as after a spurious wake-up, which a
// guest's idle loop must handle anyway), so fn never runs inside a halt.
// That is where a VM may start recording for a backup made from its state:
// the backup resumes that state by running the guest, and so must the
// primary; had the primary stayed halted, everything it recorded during
// the halt would belong to a point the backup has already left.
func (v *VM) AtRunningExit(ctx context.Context, fn func() error) error {
	return v.atExit(ctx, fn, true)
}

func (v *VM) atExit(ctx context.Context, fn func() error, running bool) error {
	r := &v.loop.requests
	r.mu.Lock()
	if !r.running {
		defer r.mu.Unlock()
		return fn()
	}
	req := &exitRequest{fn: fn, done: make(chan error, 1), running: running}
	r.queue = append(r.queue, req)
	r.pending.Store(true)
	kickErr := r.kicker.Kick()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	r.mu.Unlock()
	if kickErr != nil {
		// The loop still finds the request at its next exit; a guest that
		// never exits would keep it waiting until ctx ends.
		kickErr = errors.Join(errors.New("the request waits for the next exit"), kickErr)
	}

	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
	}
	r.mu.Lock()
	for i, q := range r.queue {
		if q == req {
			r.queue = append(r.queue[:i], r.queue[i+1:]...)
			r.mu.Unlock()
			return errors.Join(context.Cause(ctx), kickErr)
		}
	}
	r.mu.Unlock()
	return <-req.done // taken: fn is running or has run
}

// startRequests marks run as serving requests with kicker, and returns
// the function that ends it (serving what is still queued: the vCPU is out
// of KVM_RUN for good then).
func (l *loop) startRequests(kicker *kvm.Kicker) func() {
	r := &l.requests
	r.mu.Lock()
	if r.wake == nil {
		r.wake = make(chan struct{}, 1)
	}
	r.running, r.kicker = true, kicker
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		r.running, r.kicker = false, nil
		r.mu.Unlock()
		l.serveRequests()
	}
}

// serveRequests runs every queued request, on the vCPU goroutine outside
// KVM_RUN.
func (l *loop) serveRequests() {
	r := &l.requests
	r.mu.Lock()
	queue := r.queue
	r.queue = nil
	r.pending.Store(false)
	r.mu.Unlock()
	for _, req := range queue {
		req.done <- req.fn()
	}
}

// serveHaltedRequests runs the queued requests that may run inside a
// halt and reports whether others wait (AtRunningExit): the halt must end
// for them. They stay queued, pending, for the loop's top.
func (l *loop) serveHaltedRequests() (leave bool) {
	r := &l.requests
	r.mu.Lock()
	var now, later []*exitRequest
	for _, req := range r.queue {
		if req.running {
			later = append(later, req)
		} else {
			now = append(now, req)
		}
	}
	r.queue = later
	r.pending.Store(len(later) > 0)
	r.mu.Unlock()
	for _, req := range now {
		req.done <- req.fn()
	}
	return len(later) > 0
}
