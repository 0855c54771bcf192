package guesttest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/instance"
)

// Guest is one VM of a test (no replication), running until it powers
// off, Stop pulls its plug, or the test ends.
type Guest struct {
	Name    string
	Inst    *instance.Instance
	Console *Console
	// Stopped gets the VM's error (nil for a power-off or Stop) once it
	// stopped, for Console.WaitFor; Done is closed then.
	Stopped <-chan error
	Done    <-chan struct{}
	cancel  context.CancelFunc
	reason  vm.StopReason
	err     error
	closed  bool
}

// StartGuest creates the instance cfg describes and runs it; it does
// not wait for the guest to boot (Console.WaitFor does).
func StartGuest(t testing.TB, name string, cfg instance.Config) *Guest {
	t.Helper()
	g := &Guest{Name: name, Console: NewConsole()}
	cfg.Console = g.Console
	inst, err := instance.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("guest %s: %v", name, err)
	}
	g.Inst = inst
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	stopped, done := make(chan error, 1), make(chan struct{})
	g.Stopped, g.Done = stopped, done
	go func() {
		g.reason, g.err = inst.Run(ctx)
		if g.err == nil && g.reason != vm.StoppedPowerOff && g.reason != vm.StoppedCancelled {
			g.err = fmt.Errorf("guest %s stopped: %v", name, g.reason)
		}
		close(done)
		stopped <- g.err
	}()
	t.Cleanup(func() {
		g.cancel()
		<-g.Done
		g.close(t)
		if t.Failed() {
			t.Logf("guest %s console:\n%s", name, g.Console.String())
		}
	})
	return g
}

// Stop pulls the plug: the VM stops wherever it is, as on a host crash,
// and its disks and network port are released.
func (g *Guest) Stop(t testing.TB) {
	t.Helper()
	g.cancel()
	<-g.Done
	if g.err != nil {
		t.Fatalf("guest %s: %v; console:\n%s", g.Name, g.err, g.Console.String())
	}
	g.close(t)
}

// WaitExit waits up to timeout for the guest to power off and returns the
// exit status its /init printed.
func (g *Guest) WaitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-g.Done:
	case <-time.After(timeout):
		t.Fatalf("guest %s did not power off within %v; console:\n%s", g.Name, timeout, g.Console.String())
	}
	if g.err != nil || g.reason != vm.StoppedPowerOff {
		t.Fatalf("guest %s stopped with %v, %v, not a power-off; console:\n%s", g.Name, g.reason, g.err, g.Console.String())
	}
	g.close(t)
	status, ok := images.GuestExitStatus(g.Console.String())
	if !ok {
		t.Fatalf("guest %s powered off without an exit status line; console:\n%s", g.Name, g.Console.String())
	}
	return status
}

func (g *Guest) close(t testing.TB) {
	t.Helper()
	if g.closed {
		return
	}
	g.closed = true
	if err := g.Inst.Close(); err != nil {
		t.Errorf("guest %s: close: %v", g.Name, err)
	}
}
