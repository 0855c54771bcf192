package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Detach starts the supervisor (ftctl with args, e.g. 'start NAME
// --foreground ...') in a session of its own, so it outlives the command
// that started it and its terminal; its output goes to supervisor.log.
// exited yields how it ended, should it end.
func Detach(dir RunDir, ftctl string, args []string) (pid int, exited <-chan error, err error) {
	if err := dir.Create(); err != nil {
		return 0, nil, err
	}
	logf, err := os.OpenFile(dir.LogFile(Supervisor), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, nil, fmt.Errorf("start the supervisor: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: %s %q\n", time.Now().Format(time.RFC3339), ftctl, args)
	cmd := exec.Command(ftctl, args...)
	cmd.Stdout, cmd.Stderr = logf, logf // stdin: /dev/null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start the supervisor: %w", err)
	}
	ch := make(chan error, 1)
	go func() { ch <- cmd.Wait() }()
	return cmd.Process.Pid, ch, nil
}

// WaitProtected waits until the detached supervisor has seen the pair
// protected (it polls the primary; its verdict, not ours, so that a
// primary killed right after is its business, not a failed start), the
// supervisor exits (an error with its log's tail), or ctx ends.
func WaitProtected(ctx context.Context, dir RunDir, supervisorExited <-chan error) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(dir.ProtectedFile()); err == nil {
			return nil
		}
		select {
		case err := <-supervisorExited:
			return fmt.Errorf("the supervisor exited (%s) before the pair was protected; %s ends:\n%s",
				exitStatus(err), dir.LogFile(Supervisor), tail(dir.LogFile(Supervisor), 20))
		case <-ctx.Done():
			return fmt.Errorf("waiting for the pair to be protected: %w (see the logs in %s)", ctx.Err(), dir)
		case <-t.C:
		}
	}
}
