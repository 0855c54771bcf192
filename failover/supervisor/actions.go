package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/failover/control"
)

// Side is one VMM of a pair as its control socket answered: Status, or
// Err (control.ErrGone when nothing answers).
type Side struct {
	Role   string          `json:"role"`
	Status *control.Status `json:"status,omitempty"`
	Err    string          `json:"error,omitempty"`
}

// PairStatus is a pair on this host, both sides.
type PairStatus struct {
	Name    string `json:"name"`
	Dir     RunDir `json:"run_dir"`
	Primary Side   `json:"primary"`
	Backup  Side   `json:"backup"`
}

// askTimeout bounds one question to a control socket: a side whose
// status does not come (its process stopped with SIGSTOP, or stuck) must
// not hang 'ftctl status'.
const askTimeout = 3 * time.Second

// ask reads role's status from its control socket.
func ask(ctx context.Context, dir RunDir, role string) (control.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	st, err := control.Get(ctx, dir.Control(role))
	if err != nil && ctx.Err() != nil && !errors.Is(err, control.ErrGone) {
		return st, fmt.Errorf("not answering within %v (stopped or stuck?): %w", askTimeout, err)
	}
	return st, err
}

// Read asks both sides' control sockets.
func Read(ctx context.Context, name string, dir RunDir) PairStatus {
	ps := PairStatus{Name: name, Dir: dir}
	for _, side := range []*Side{&ps.Primary, &ps.Backup} {
		role := Primary
		if side == &ps.Backup {
			role = Backup
		}
		side.Role = role
		st, err := ask(ctx, dir, role)
		if err != nil {
			side.Err = err.Error()
			if errors.Is(err, control.ErrGone) {
				side.Err = "gone"
			}
			continue
		}
		side.Status = &st
	}
	return ps
}

// LastFailover is the failover timeline either side reports (the backup
// that went live), or nil.
func (ps PairStatus) LastFailover() *control.Failover {
	for _, s := range []Side{ps.Backup, ps.Primary} {
		if s.Status != nil && s.Status.Failover != nil {
			return s.Status.Failover
		}
	}
	return nil
}

// WriteText prints a pair's status for a person: one block per side, then
// the last failover.
func (ps PairStatus) WriteText(w io.Writer) {
	fmt.Fprintf(w, "pair %s (%s)\n", ps.Name, ps.Dir)
	for _, s := range []Side{ps.Primary, ps.Backup} {
		if s.Status == nil {
			fmt.Fprintf(w, "  %-7s  %s\n", s.Role, s.Err)
			continue
		}
		st := s.Status
		fmt.Fprintf(w, "  %-7s  %s (pid %d): %s\n", s.Role, st.Phase, st.PID, st.State)
		fmt.Fprintf(w, "           generation %d, lag %s (%d entries; last minute p50 %s p99 %s), held outputs %d (%d B), log %.0f entries/s %.2f Mbit/s, digests %d\n",
			st.Generation, seconds(st.LagSeconds), st.LagEntries, seconds(st.LagP50Seconds), seconds(st.LagP99Seconds), st.HeldOutputs, st.HeldBytes,
			st.LogEntriesPerSecond, st.LogBytesPerSecond*8/1e6, st.Digests)
		if r := st.Reprotected; r != nil {
			fmt.Fprintf(w, "           protected again after its failover: %d rounds, %d pages (%.1f MiB) in %.0f ms, guest paused %.1f ms, throttled up to %.0f%%\n",
				r.Rounds, r.Pages, float64(r.Bytes)/(1<<20), r.TotalMS, r.PauseMS, r.MaxThrottle*100)
		}
		if st.ProtectedAgain > 0 {
			fmt.Fprintf(w, "           made %d new backups from its running guest after losing one\n", st.ProtectedAgain)
		}
	}
	if f := ps.LastFailover(); f != nil {
		fmt.Fprintf(w, "  last failover: %s\n", FormatFailover(*f))
	}
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond)
}

// FormatFailover is a failover's timeline in milliseconds.
func FormatFailover(f control.Failover) string {
	return fmt.Sprintf("primary lost at %s (%s); log drained +%.0f ms, record claimed (generation %d) +%.0f ms, live +%.0f ms; %d disk writes re-issued, %d frames sent again",
		f.PrimaryLost.Format("15:04:05.000"), f.Why, f.DrainedMS, f.Generation, f.ClaimedMS, f.LiveMS, f.RewrittenWrites, f.ResentFrames)
}

// SignalPrimary sends sig to the pair's primary: SIGKILL is the demo of
// a failover, SIGUSR2 asks for a planned switchover ('ftctl run' hands
// the guest over). It returns the primary's pid and when it was signalled.
func SignalPrimary(dir RunDir, sig syscall.Signal) (int, time.Time, error) {
	proc, err := readPIDFile(dir.PIDFile(Primary))
	if errors.Is(err, ErrNotRunning) {
		return 0, time.Time{}, fmt.Errorf("no primary is running in %s (already failed over, or stopped? see 'ftctl status')", dir)
	}
	if err != nil {
		return 0, time.Time{}, err
	}
	at := time.Now()
	if err := proc.signal(sig); err != nil {
		return 0, time.Time{}, fmt.Errorf("signal the primary (pid %d): %w", proc.PID, err)
	}
	return proc.PID, at, nil
}

// WaitPhase polls role's control socket until it reports phase, a phase
// in fail (an error naming its state), or ctx ends.
func WaitPhase(ctx context.Context, dir RunDir, role, phase string, fail ...string) (control.Status, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	var last control.Status
	var lastErr error
	for {
		st, err := ask(ctx, dir, role)
		if err == nil {
			last, lastErr = st, nil
			if st.Phase == phase {
				return st, nil
			}
			for _, f := range fail {
				if st.Phase == f {
					return st, fmt.Errorf("the %s is %s: %s", role, st.Phase, st.State)
				}
			}
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return last, fmt.Errorf("waiting for the %s to be %s: %w (last: %v)", role, phase, ctx.Err(), lastErr)
			}
			return last, fmt.Errorf("waiting for the %s to be %s: %w (last state: %s)", role, phase, ctx.Err(), last.State)
		case <-t.C:
		}
	}
}

// Stop stops a pair: SIGTERM to the primary, then the backup, then the
// storage server, the switch and the supervisor, each waited for (SIGKILL after grace), then
// removes the sockets and pid files. It returns which processes it
// stopped; none is not an error.
func Stop(ctx context.Context, dir RunDir, grace time.Duration) ([]string, error) {
	var stopped []string
	var errs []error
	// The primary first: its log ends cleanly, so the backup stops too
	// instead of going live.
	for _, name := range []string{Primary, Backup, Storage, Switch, Supervisor} {
		proc, err := readPIDFile(dir.PIDFile(name))
		if errors.Is(err, ErrNotRunning) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := terminate(ctx, proc, grace); err != nil {
			errs = append(errs, fmt.Errorf("stop the %s: %w", name, err))
			continue
		}
		if name == Storage {
			name = "storage server"
		}
		stopped = append(stopped, fmt.Sprintf("%s (pid %d)", name, proc.PID))
	}
	if len(errs) == 0 {
		errs = append(errs, dir.CleanSockets())
	}
	return stopped, errors.Join(errs...)
}

// terminate sends SIGTERM, and SIGKILL if proc outlives grace.
func terminate(ctx context.Context, proc Process, grace time.Duration) error {
	if err := proc.signal(syscall.SIGTERM); err != nil {
		if errors.Is(err, ErrNotRunning) {
			return nil
		}
		return err
	}
	graceCtx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	if err := proc.waitGone(graceCtx); err == nil || ctx.Err() != nil {
		return err
	}
	if err := proc.signal(syscall.SIGKILL); err != nil && !errors.Is(err, ErrNotRunning) {
		return err
	}
	killCtx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if err := proc.waitGone(killCtx); err != nil {
		return fmt.Errorf("still running after SIGKILL: %w", err)
	}
	return nil
}
