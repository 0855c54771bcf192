// Package supervisor owns a pair run on one host by 'ftctl start': the
// run directory's layout, the child processes (the network switch, the
// backup and the primary, each an 'ftctl' re-exec) with their pid files
// and logs, waiting until the pair is protected, and the actions on a
// running pair (status, kill the primary, stop).
//
// It drives the VMMs only through their command lines, signals and
// control sockets (package control): a supervisor that dies leaves the
// pair running, and 'ftctl stop' works without it.
package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ftvm/ftvm/storage/arbiter"
)

// The processes of a pair, named as in the run directory's files.
const (
	Primary    = "primary"
	Backup     = "backup"
	Switch     = "switch"
	Storage    = "storage"
	Supervisor = "supervisor"
)

// RunDir is a pair's run directory:
//
//	supervisor.pid, primary.pid, backup.pid, switch.pid,  "PID STARTTIME"
//	storage.pid
//	supervisor.log, primary.log, backup.log, switch.log,  each process's stderr and stdout
//	storage.log
//	primary.console, backup.console                       the guest's serial console
//	primary.sock, backup.sock                             control sockets (GET /status, /metrics)
//	log.sock                                              the log channel (the backup listens)
//	net.sock                                              the switch the supervisor started
//	storage.sock                                          the storage server it started
//	arbiter/                                              the pair's arbiter record without a storage server
//	protected                                             the supervisor (pid) saw the pair protected
type RunDir string

// DefaultDir is where a pair's run directory lives unless given:
// $XDG_RUNTIME_DIR/ftvm/NAME, else /run/ftvm/NAME for root and
// ~/.local/state/ftvm/NAME for others.
func DefaultDir(name string) (RunDir, error) {
	parent, err := DefaultParent()
	if err != nil {
		return "", err
	}
	return RunDir(filepath.Join(parent, name)), nil
}

// DefaultParent is the directory holding the pairs' run directories.
func DefaultParent() (string, error) {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "ftvm"), nil
	}
	if os.Geteuid() == 0 {
		return "/run/ftvm", nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the default run directory: %w (give --run-dir)", err)
	}
	return filepath.Join(home, ".local", "state", "ftvm"), nil
}

// ValidateName checks a pair's name: it names the run directory and the
// arbiter record.
func ValidateName(name string) error {
	if err := arbiter.ValidatePair(name); err != nil {
		return fmt.Errorf("pair name %q: %w", name, err)
	}
	return nil
}

func (d RunDir) path(name string) string { return filepath.Join(string(d), name) }

// PIDFile, LogFile, ConsoleFile and Control name a process's files.
func (d RunDir) PIDFile(proc string) string     { return d.path(proc + ".pid") }
func (d RunDir) LogFile(proc string) string     { return d.path(proc + ".log") }
func (d RunDir) ConsoleFile(role string) string { return d.path(role + ".console") }
func (d RunDir) Control(role string) string     { return d.path(role + ".sock") }

// LogSocket is the log channel's socket (the backup listens on it);
// LogChannel its address as 'ftctl run' takes it.
func (d RunDir) LogSocket() string  { return d.LogSocketN(1) }
func (d RunDir) LogChannel() string { return "unix:" + d.LogSocket() }

// LogSocketN is the socket the n-th backup of the pair listens on: the
// first is the pair's; each later one is made by re-protection after a
// failover, and its predecessor (the survivor) protects itself to it.
func (d RunDir) LogSocketN(n int) string {
	if n <= 1 {
		return d.path("log.sock")
	}
	return d.path(fmt.Sprintf("log%d.sock", n))
}

// NetSocket is the socket of the switch the supervisor starts.
func (d RunDir) NetSocket() string { return d.path("net.sock") }

// ProtectedFile is written by the supervisor once the primary reported
// the pair protected (it holds the supervisor's pid): what a detached
// 'ftctl start' waits for.
func (d RunDir) ProtectedFile() string { return d.path("protected") }

// StorageSocket is the socket of the storage server the supervisor starts.
func (d RunDir) StorageSocket() string { return d.path("storage.sock") }

// Arbiter is the directory holding the pair's arbiter record when the
// pair has no storage server (which holds it otherwise).
func (d RunDir) Arbiter() string { return d.path("arbiter") }

// Create makes the run directory (only its owner may enter: it holds the
// control sockets).
func (d RunDir) Create() error {
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return fmt.Errorf("create the run directory: %w", err)
	}
	return nil
}

// Exists says whether the run directory is there, and errors on anything
// but a directory.
func (d RunDir) Exists() (bool, error) {
	fi, err := os.Stat(string(d))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	case !fi.IsDir():
		return false, fmt.Errorf("run directory %s is not a directory", d)
	}
	return true, nil
}

// CleanSockets removes the sockets, pid files and protected mark a
// stopped pair left; logs, consoles and the arbiter record stay.
func (d RunDir) CleanSockets() error {
	var errs []error
	for _, pattern := range []string{"*.sock", "*.pid", "protected"} {
		files, _ := filepath.Glob(d.path(pattern))
		for _, f := range files {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// CheckNotRunning is an error if a process of the pair named in the run
// directory (other than this one) runs.
func (d RunDir) CheckNotRunning(name string) error {
	for _, proc := range []string{Supervisor, Primary, Backup, Storage, Switch} {
		if p, err := readPIDFile(d.PIDFile(proc)); err == nil && p.PID != os.Getpid() {
			return fmt.Errorf("pair %s is already running (%s pid %d, run directory %s); 'ftctl stop %s' first", name, proc, p.PID, d, name)
		}
	}
	return nil
}

// List names the pairs with a run directory under parent.
func List(parent string) ([]string, error) {
	entries, err := os.ReadDir(parent)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the pairs in %s: %w", parent, err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
