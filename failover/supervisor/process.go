package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a pid with the kernel's start time of that process, so a pid
// file never names an unrelated process that reused the pid.
type Process struct {
	PID   int
	Start uint64 // /proc/PID/stat field 22, in clock ticks since boot
}

// processOf reads pid's start time; an error if pid is not running.
func processOf(pid int) (Process, error) {
	start, err := startTime(pid)
	if err != nil {
		return Process{}, err
	}
	return Process{PID: pid, Start: start}, nil
}

func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// Alive says whether the process is still the one the pid file named.
func (p Process) Alive() bool {
	start, err := startTime(p.PID)
	return err == nil && start == p.Start
}

func writePIDFile(path string, pid int) error {
	p, err := processOf(pid)
	if err != nil {
		return fmt.Errorf("pid file %s: %w", path, err)
	}
	if err := os.WriteFile(path, fmt.Appendf(nil, "%d %d\n", p.PID, p.Start), 0o600); err != nil {
		return fmt.Errorf("write the pid file: %w", err)
	}
	return nil
}

// ErrNotRunning: the pid file is missing, or its process has exited.
var ErrNotRunning = errors.New("not running")

// readPIDFile returns the running process a pid file names.
func readPIDFile(path string) (Process, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Process{}, ErrNotRunning
	}
	if err != nil {
		return Process{}, err
	}
	p, err := parsePIDFile(b)
	if err != nil {
		return Process{}, fmt.Errorf("pid file %s: %w", path, err)
	}
	if !p.Alive() {
		return Process{}, ErrNotRunning
	}
	return p, nil
}

// signal sends sig to p if it is still the process it was.
func (p Process) signal(sig syscall.Signal) error {
	if !p.Alive() {
		return ErrNotRunning
	}
	if err := syscall.Kill(p.PID, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return ErrNotRunning
		}
		return fmt.Errorf("signal process %d: %w", p.PID, err)
	}
	return nil
}

// waitGone polls until p has exited (any process may be waited on this
// way, not only a child) or ctx ends.
func (p Process) waitGone(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for p.Alive() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("process %d is still running: %w", p.PID, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// parsePIDFile reads "PID STARTTIME\n".
func parsePIDFile(b []byte) (Process, error) {
	var p Process
	fields := strings.Fields(string(b))
	bad := fmt.Errorf("%q: want \"PID STARTTIME\"", b)
	if len(fields) != 2 {
		return Process{}, bad
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil || pid <= 0 {
		return Process{}, bad
	}
	if p.Start, err = strconv.ParseUint(fields[1], 10, 64); err != nil {
		return Process{}, bad
	}
	p.PID = pid
	return p, nil
}
