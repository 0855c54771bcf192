package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Detached is a supervisor running in the background.
type Detached struct {
	PID    int
	dir    RunDir
	exited chan error // how it ended, once
}

// Detach starts the supervisor (ftctl with args, e.g. 'start NAME
// --foreground ...') in a session of its own, so it outlives the command
// that started it and its terminal; its output goes to supervisor.log.
func Detach(dir RunDir, ftctl string, args []string) (*Detached, error) {
	if err := dir.Create(); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(dir.LogFile(Supervisor), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start the supervisor: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: %s %q\n", time.Now().Format(time.RFC3339), ftctl, args)
	cmd := exec.Command(ftctl, args...)
	cmd.Stdout, cmd.Stderr = logf, logf // stdin: /dev/null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the supervisor: %w", err)
	}
	d := &Detached{PID: cmd.Process.Pid, dir: dir, exited: make(chan error, 1)}
	go func() { d.exited <- cmd.Wait() }()
	return d, nil
}

// WaitProtected waits until the supervisor has seen the pair protected
// (it polls the primary; its verdict, not ours, so that a primary killed
// right after is its business, not a failed start), the supervisor exits
// (an error with its log's tail), or ctx ends.
func (d *Detached) WaitProtected(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if b, err := os.ReadFile(d.dir.ProtectedFile()); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(d.PID) {
			return nil
		}
		select {
		case err := <-d.exited:
			d.exited <- err // for Stop
			return fmt.Errorf("the supervisor exited (%s) before the pair was protected; %s ends:\n%s",
				exitStatus(err), d.dir.LogFile(Supervisor), tail(d.dir.LogFile(Supervisor), 20))
		case <-ctx.Done():
			return fmt.Errorf("waiting for the pair to be protected: %w (see the logs in %s)", ctx.Err(), d.dir)
		case <-t.C:
		}
	}
}

// Stop ends the supervisor (SIGTERM: it stops what it started, primary
// first) and waits for it; SIGKILL after grace.
func (d *Detached) Stop(grace time.Duration) {
	syscall.Kill(d.PID, syscall.SIGTERM)
	select {
	case err := <-d.exited:
		d.exited <- err
	case <-time.After(grace):
		syscall.Kill(d.PID, syscall.SIGKILL)
	}
}
