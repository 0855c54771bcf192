// Command guestinit is the ftvm guest's /init: a static Go binary (build it
// with CGO_ENABLED=0) that the kernel starts as PID 1 from the initramfs.
//
// As PID 1 it mounts /proc, /sys, /dev (devtmpfs), /tmp and /run (tmpfs),
// prints one machine-readable line on the console,
//
//	ftvm-guest ready clocksource=<current clocksource> kernel=<uname release>
//
// then runs the workload named by the kernel parameter ftvm.workload=NAME
// (default none; see registry) in a child process: itself, re-executed with
// FTVM_GUEST_ROLE=workload. When the child ends, however it ends (return,
// error, panic in any goroutine, signal), PID 1 prints
//
//	ftvm-guest exit status=<n>
//
// and powers the machine off. PID 1 itself never exits, because that would
// end in a kernel panic without a word about why.
//
// Exit statuses: 0 success, 1 workload error, 2 bad command line, 3 workload
// panic (recovered), 128+N killed by signal N, anything else as the child
// process exited (Go's runtime exits 2 on an unrecovered panic in another
// goroutine).
//
// Run as an ordinary process (not PID 1, for tests) it mounts nothing,
// reads the command line from $FTVM_GUEST_CMDLINE if set, and exits with
// the workload's status instead of powering off.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	roleEnv    = "FTVM_GUEST_ROLE"
	cmdlineEnv = "FTVM_GUEST_CMDLINE"
	clockPath  = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
)

func main() {
	if os.Getenv(roleEnv) == "workload" {
		os.Exit(workloadMain(os.Stdout))
	}
	pid1 := os.Getpid() == 1
	status := supervise(pid1, os.Stdout)
	if !pid1 {
		os.Exit(status)
	}
	powerOff(os.Stdout)
}

// supervise is PID 1's work up to the power-off; it returns the exit status
// to report and never lets a panic of its own escape.
func supervise(pid1 bool, out io.Writer) (status int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(out, "ftvm-guest init panicked: %v\n%s", r, debug.Stack())
			status = 255
		}
		fmt.Fprintf(out, "ftvm-guest exit status=%d\n", status)
	}()
	if pid1 {
		for _, err := range mountAll() {
			fmt.Fprintf(out, "ftvm-guest warning: %v\n", err)
		}
	}
	fmt.Fprintln(out, readyLine(readClocksource(), kernelRelease()))

	cmdline, err := readCmdline(pid1)
	if err != nil {
		fmt.Fprintf(out, "ftvm-guest error: %v\n", err)
		return 2
	}
	if _, err := ParseCmdline(cmdline, registry()); err != nil {
		fmt.Fprintf(out, "ftvm-guest error: %v\n", err)
		return 2
	}
	return runChild(out, cmdline)
}

// readyLine formats the one line a host waits for.
func readyLine(clocksource, release string) string {
	return fmt.Sprintf("ftvm-guest ready clocksource=%s kernel=%s", fieldValue(clocksource), fieldValue(release))
}

// fieldValue keeps a key=value line parseable by splitting on spaces.
func fieldValue(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return "unknown"
	}
	return strings.Join(strings.Fields(s), "_")
}

func readClocksource() string {
	b, err := os.ReadFile(clockPath)
	if err != nil {
		return "unknown"
	}
	return string(b)
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func readCmdline(pid1 bool) (string, error) {
	if s, ok := os.LookupEnv(cmdlineEnv); ok && !pid1 {
		return s, nil
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", fmt.Errorf("read kernel command line: %w", err)
	}
	return string(b), nil
}

// mountAll mounts the filesystems the guest needs; it reports failures but
// carries on, since a workload may not need all of them.
func mountAll() []error {
	var errs []error
	for _, m := range []struct {
		fstype, target, data string
		mode                 os.FileMode
	}{
		{"proc", "/proc", "", 0o555},
		{"sysfs", "/sys", "", 0o555},
		{"devtmpfs", "/dev", "", 0o755},
		{"tmpfs", "/tmp", "mode=1777", 0o1777},
		{"tmpfs", "/run", "mode=0755", 0o755},
	} {
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			errs = append(errs, fmt.Errorf("create mount point %s: %w", m.target, err))
			continue
		}
		err := unix.Mount(m.fstype, m.target, m.fstype, unix.MS_NOSUID, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	return errs
}

// runChild re-executes this binary as the workload process and returns
// its exit status. Running the workload in a child is what makes any crash
// of it reportable: a panic in one of its goroutines kills only the child.
func runChild(out io.Writer, cmdline string) int {
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), roleEnv+"=workload", cmdlineEnv+"="+cmdline)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, out, out
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(out, "ftvm-guest error: start workload: %v\n", err)
		return 1
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	default:
		fmt.Fprintf(out, "ftvm-guest error: wait for workload: %v\n", err)
		return 1
	}
}

// workloadMain is the child: parse the command line and run the workload.
func workloadMain(out io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	known := registry()
	cfg, err := ParseCmdline(os.Getenv(cmdlineEnv), known)
	if err != nil {
		fmt.Fprintf(out, "ftvm-guest error: %v\n", err)
		return 2
	}
	return runWorkload(ctx, cfg, known[cfg.Workload], out)
}

// powerOff ends the machine. If the kernel refuses (no ACPI power-off),
// halting is the next best thing; PID 1 must never return.
func powerOff(out io.Writer) {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Fprintf(out, "ftvm-guest error: power off: %v; halting\n", err)
	err = unix.Reboot(unix.LINUX_REBOOT_CMD_HALT)
	fmt.Fprintf(out, "ftvm-guest error: halt: %v; sleeping forever\n", err)
	for {
		time.Sleep(time.Hour)
	}
}
