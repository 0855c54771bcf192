package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Pair is what 'ftctl start' runs.
type Pair struct {
	Name string
	Dir  RunDir
	// Ftctl is the executable the children run (os.Executable()).
	Ftctl string
	// Machine are 'ftctl run' flags both sides get: image, memory,
	// disks, address, command line, tunables.
	Machine []string
	// Net is the socket of a running switch; "" starts one in the run
	// directory with Forwards.
	Net      string
	Forwards []string
	// StorageServer is the socket of a running 'ftctl storage serve'
	// (which owns the disks, holds the arbiter record and fences a stale
	// side's writes); "" starts one in the run directory serving
	// StorageDir; NoStorageServer has each side open the disks itself,
	// with the arbiter record in the run directory (no fencing).
	StorageServer string
	// StorageDir is the storage directory ("" for the default).
	StorageDir string
	// Timeout bounds each start step (switch up, backup listening,
	// primary protected).
	Timeout time.Duration
	// NoReprotect turns automatic re-protection off: by default, when the
	// primary dies and the backup goes live, the supervisor starts a new
	// backup and the survivor copies its running guest there and is the
	// primary of a new pair (each backup runs with --protect-to the next
	// one's address).
	NoReprotect bool
	Log         *slog.Logger
}

// NoStorageServer as Pair.StorageServer: no storage server.
const NoStorageServer = "none"

func (p Pair) storageSocket() string {
	if p.StorageServer != "" {
		return p.StorageServer
	}
	return p.Dir.StorageSocket()
}

// StorageArgs are the storage server's arguments after the executable.
func (p Pair) StorageArgs() []string {
	args := []string{"storage", "serve", "--socket", p.Dir.StorageSocket()}
	if p.StorageDir != "" {
		args = append(args, "--dir", p.StorageDir)
	}
	return args
}

func (p Pair) netSocket() string {
	if p.Net != "" {
		return p.Net
	}
	return p.Dir.NetSocket()
}

// SwitchArgs are the switch's arguments after the executable.
func (p Pair) SwitchArgs() []string {
	args := []string{"net", "serve", "--socket", p.Dir.NetSocket()}
	for _, f := range p.Forwards {
		args = append(args, "--forward", f)
	}
	return args
}

// VMMArgs are one side's arguments after the executable: the machine
// flags, then what makes it this pair's primary or backup.
func (p Pair) VMMArgs(role string) []string { return p.vmmArgs(role, 1) }

// vmmArgs are VMMArgs for the n-th backup of the pair (n > 1: one made by
// re-protection after a failover).
func (p Pair) vmmArgs(role string, n int) []string {
	args := append([]string{"run"}, p.Machine...)
	args = append(args, "--net", p.netSocket(), "--role", role)
	if role == Backup {
		args = append(args, "--listen", "unix:"+p.Dir.LogSocketN(n))
		if !p.NoReprotect {
			args = append(args, "--protect-to", "unix:"+p.Dir.LogSocketN(n+1))
		}
	} else {
		args = append(args, "--peer", p.Dir.LogChannel())
		if !p.NoReprotect {
			args = append(args, "--protect-again")
		}
	}
	if p.StorageServer == NoStorageServer {
		args = append(args, "--arbiter", p.Dir.Arbiter())
		if p.StorageDir != "" {
			args = append(args, "--storage", p.StorageDir)
		}
	} else {
		args = append(args, "--storage-server", p.storageSocket())
	}
	return append(args, "--pair", p.Name,
		"--control", p.Dir.Control(role),
		"--console", p.Dir.ConsoleFile(role))
}

// child is a process the supervisor started.
type child struct {
	proc Process
	done chan struct{} // closed when it exited and was reaped
	err  error         // how it exited, once done

	mu   sync.Mutex
	name string // changes when a live backup becomes the primary
}

func (c *child) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.name
}

// start runs ftctl with args as the child name, its output appended to
// name.log and its pid in name.pid. Children get their own process
// group: a Ctrl-C at the supervisor's terminal reaches the supervisor
// only, which stops them in order (primary first, so the backup sees a
// clean end and does not go live).
func (p Pair) start(name string, args []string) (*child, error) {
	logf, err := os.OpenFile(p.Dir.LogFile(name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start the %s: %w", name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: %s %q\n", time.Now().Format(time.RFC3339), p.Ftctl, args)
	cmd := exec.Command(p.Ftctl, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the %s: %w", name, err)
	}
	c := &child{name: name, done: make(chan struct{})}
	c.proc, err = processOf(cmd.Process.Pid)
	if err == nil {
		err = writePIDFile(p.Dir.PIDFile(name), cmd.Process.Pid)
	}
	go func() {
		c.err = cmd.Wait()
		c.mu.Lock()
		os.Remove(p.Dir.PIDFile(c.name))
		c.mu.Unlock()
		close(c.done)
	}()
	if err != nil {
		cmd.Process.Kill()
		<-c.done
		return nil, err
	}
	return c, nil
}

// exited reports how a child that exited early ended, with its log's tail.
func (p Pair) exited(c *child) error {
	name := c.String()
	return fmt.Errorf("the %s exited (%v) before the pair was protected; its log %s ends:\n%s",
		name, c.err, p.Dir.LogFile(name), tail(p.Dir.LogFile(name), 15))
}

// waitFor polls ready until it says yes, the child exits, or the step's
// timeout passes.
func (p Pair) waitFor(ctx context.Context, c *child, what string, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !ready(ctx) {
		select {
		case <-c.done:
			return p.exited(c)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (see %s)", what, ctx.Err(), p.Dir.LogFile(c.String()))
		case <-t.C:
		}
	}
	return nil
}

func exists(path string) func(context.Context) bool {
	return func(context.Context) bool {
		_, err := os.Stat(path)
		return err == nil
	}
}

// Run is the supervisor: it starts the switch (unless Net is given), the
// storage server (unless StorageServer is given or none), the backup and
// the primary, calls ready once the primary reports the pair
// protected, and then waits until both sides have exited or ctx ends; it
// stops what it started in order (primary, backup, storage server,
// switch) on its way out.
func (p Pair) Run(ctx context.Context, ready func()) error {
	if p.Timeout <= 0 {
		p.Timeout = 2 * time.Minute
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if err := p.Dir.Create(); err != nil {
		return err
	}
	if err := p.Dir.CheckNotRunning(p.Name); err != nil {
		return err
	}
	// What is left is a dead run's: its log socket would pass for a
	// listening backup.
	if err := p.Dir.CleanSockets(); err != nil {
		return err
	}
	if err := writePIDFile(p.Dir.PIDFile(Supervisor), os.Getpid()); err != nil {
		return err
	}
	defer os.Remove(p.Dir.PIDFile(Supervisor))

	type step struct {
		name  string
		args  []string
		what  string // what ready waits for
		ready func(context.Context) bool
	}
	var steps []step
	if p.Net == "" {
		steps = append(steps, step{Switch, p.SwitchArgs(), "the switch's socket " + p.Dir.NetSocket(), exists(p.Dir.NetSocket())})
	}
	if p.StorageServer == "" {
		steps = append(steps, step{Storage, p.StorageArgs(), "the storage server's socket " + p.Dir.StorageSocket(), exists(p.Dir.StorageSocket())})
	}
	steps = append(steps,
		step{Backup, p.VMMArgs(Backup), "the backup to listen on " + p.Dir.LogChannel(), exists(p.Dir.LogSocket())},
		step{Primary, p.VMMArgs(Primary), "the primary to report the pair protected", func(ctx context.Context) bool {
			st, err := ask(ctx, p.Dir, Primary)
			return err == nil && st.Phase == "protected"
		}})
	var started []*child // in start order; stopped in reverse
	// The current primary and backup, stopped first (primary first);
	// re-protection replaces them.
	var current []*child
	defer func() {
		p.stopChildren(current)
		p.stopChildren(started)
	}()
	for _, s := range steps {
		c, err := p.start(s.name, s.args)
		if err != nil {
			return err
		}
		started = append(started, c)
		if err := p.waitFor(ctx, c, s.what, s.ready); err != nil {
			return err
		}
	}
	backup, primary := started[len(started)-2], started[len(started)-1]
	started = started[:len(started)-2]
	current = []*child{backup, primary}
	p.Log.Info("pair protected", "pair", p.Name, "primary", primary.proc.PID, "backup", backup.proc.PID)
	if err := os.WriteFile(p.Dir.ProtectedFile(), fmt.Appendf(nil, "%d\n", os.Getpid()), 0o600); err != nil {
		return fmt.Errorf("mark the pair protected: %w", err)
	}
	defer os.Remove(p.Dir.ProtectedFile())
	if ready != nil {
		ready()
	}
	// A killed primary leaves the backup live, and re-protection makes it
	// the primary of a new pair; without it, or when the backup is the
	// one lost, the pair ends when both sides have exited (or ctx ends:
	// stop them).
	// idx is the current backup's number (its log socket); failovers
	// counts the dead primaries.
	for idx, failovers := 1, 0; ; {
		select {
		case <-primary.done:
			p.Log.Info("exited", "process", primary.String(), "pid", primary.proc.PID, "status", exitStatus(primary.err))
			if p.NoReprotect {
				return p.waitExit(ctx, backup)
			}
			failovers++
			next, err := p.reprotect(ctx, backup, idx, failovers)
			if err != nil {
				p.Log.Error("re-protection failed; the survivor runs unprotected", "pair", p.Name, "err", err)
				return p.waitExit(ctx, backup)
			}
			primary, backup = backup, next
			idx++
		case <-backup.done:
			p.Log.Info("exited", "process", backup.String(), "pid", backup.proc.PID, "status", exitStatus(backup.err))
			if p.NoReprotect {
				return p.waitExit(ctx, primary)
			}
			next, err := p.replaceBackup(ctx, primary, idx)
			if err != nil {
				p.Log.Error("no new backup; the primary runs unprotected", "pair", p.Name, "err", err)
				return p.waitExit(ctx, primary)
			}
			backup = next
		case <-ctx.Done():
			return nil
		}
		current = []*child{backup, primary}
	}
}

// replaceBackup follows the loss of the idx-th backup while the primary
// lives: the primary wins the record and (--protect-again) copies its
// running guest to a new backup listening where the lost one did, which
// this starts. It returns the new backup once the primary reports the
// pair protected again.
func (p Pair) replaceBackup(ctx context.Context, primary *child, idx int) (*child, error) {
	start := time.Now()
	before, _ := ask(ctx, p.Dir, Primary)
	os.Remove(p.Dir.LogSocketN(idx)) // the dead backup's
	if err := os.Rename(p.Dir.LogFile(Backup), fmt.Sprintf("%s.lost%d", p.Dir.LogFile(Backup), idx)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("keep the lost backup's log: %w", err)
	}
	p.Log.Info("backup lost; starting a new one for the primary to protect its guest again", "pair", p.Name, "backup", idx)
	next, err := p.start(Backup, p.vmmArgs(Backup, idx))
	if err != nil {
		return nil, err
	}
	if err := p.waitFor(ctx, primary, "the primary to report the pair protected again", func(ctx context.Context) bool {
		st, err := ask(ctx, p.Dir, Primary)
		return err == nil && st.Phase == "protected" && st.ProtectedAgain > before.ProtectedAgain
	}); err != nil {
		p.stopChildren([]*child{next})
		return nil, err
	}
	p.Log.Info("protected again", "pair", p.Name, "primary", primary.proc.PID, "backup", next.proc.PID, "after", time.Since(start).Round(time.Millisecond))
	return next, nil
}

// waitExit waits for c to exit or ctx to end.
func (p Pair) waitExit(ctx context.Context, c *child) error {
	select {
	case <-c.done:
		p.Log.Info("exited", "process", c.String(), "pid", c.proc.PID, "status", exitStatus(c.err))
	case <-ctx.Done():
	}
	return nil
}

// reprotect follows a failover: once the backup (the n-th) is live, its
// files take the primary's names (status, failover and stop find it
// there; the dead primary's log and console are kept with the suffix
// .failedN, N counting failovers), a new backup starts listening where the survivor's
// --protect-to points, and the survivor copies its running guest there.
// It returns the new backup once the survivor reports the pair protected.
func (p Pair) reprotect(ctx context.Context, survivor *child, n, failovers int) (*child, error) {
	start := time.Now()
	if err := p.waitFor(ctx, survivor, "the backup to go live", func(ctx context.Context) bool {
		st, err := ask(ctx, p.Dir, Backup)
		return err == nil && (st.Phase == "live" || st.Role == Primary)
	}); err != nil {
		return nil, err
	}
	for _, f := range []func(string) string{p.Dir.LogFile, p.Dir.ConsoleFile} {
		if err := os.Rename(f(Primary), fmt.Sprintf("%s.failed%d", f(Primary), failovers)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("keep the dead primary's files: %w", err)
		}
	}
	survivor.mu.Lock()
	var errs []error
	for _, f := range []func(string) string{p.Dir.PIDFile, p.Dir.Control, p.Dir.LogFile, p.Dir.ConsoleFile} {
		if err := os.Rename(f(Backup), f(Primary)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	survivor.name = Primary
	survivor.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("give the survivor the primary's files: %w", err)
	}
	p.Log.Info("failover: the backup is live; starting a new backup to protect it again", "pair", p.Name, "survivor", survivor.proc.PID, "backup", n+1)
	next, err := p.start(Backup, p.vmmArgs(Backup, n+1))
	if err != nil {
		return nil, err
	}
	if err := p.waitFor(ctx, survivor, "the survivor to report the pair protected again", func(ctx context.Context) bool {
		st, err := ask(ctx, p.Dir, Primary)
		return err == nil && st.Phase == "protected" && st.Reprotected != nil
	}); err != nil {
		p.stopChildren([]*child{next})
		return nil, err
	}
	p.Log.Info("protected again", "pair", p.Name, "primary", survivor.proc.PID, "backup", next.proc.PID, "after", time.Since(start).Round(time.Millisecond))
	return next, nil
}

// stopChildren stops the children still running, last started first:
// the primary before the backup, so the backup sees the log end cleanly
// and does not go live, then the storage server and the switch.
func (p Pair) stopChildren(started []*child) {
	for i := len(started) - 1; i >= 0; i-- {
		c := started[i]
		select {
		case <-c.done:
			continue
		default:
		}
		if err := terminate(context.Background(), c.proc, stopGrace); err != nil {
			p.Log.Warn("stop", "process", c.String(), "pid", c.proc.PID, "err", err)
		}
		<-c.done
		p.Log.Info("stopped", "process", c.String(), "pid", c.proc.PID, "status", exitStatus(c.err))
	}
}

// stopGrace is how long a process has to stop on SIGTERM (a primary
// waits a few seconds for the backup's last acks).
const stopGrace = 15 * time.Second

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return err.Error()
}

// tail is the last n lines of a file, for an error message.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + string(bytes.Join(lines, []byte("\n  ")))
}
