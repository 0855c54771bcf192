// Command guestinit is the ftvm guest's /init: a static Go binary (build it
// with CGO_ENABLED=0) that the kernel starts as PID 1 from the initramfs.
//
// As PID 1 it mounts /proc, /sys, /dev (devtmpfs), /tmp and /run (tmpfs),
// brings up the network and mounts the disk as the kernel command line
// says (below), printing
//
//	ftvm-guest net eth0=<addr>/<len> gw=<gw|none> [dns=<a,b>] via=static|dhcp
//	ftvm-guest disk dev=<device> mount=/data fs=<type>
//
// then prints what a user-mode RDTSC returns (tsc.go: "emulated" in the
// ftvm guest, whose kernel answers RDTSC from the clocksource because the
// CPU has no TSC; "hardware" elsewhere),
//
//	ftvm-guest tsc rdtsc=emulated value=<n> monotonic_ns=<a>..<b> samples=<k>
//
// and the one line a host waits for,
//
//	ftvm-guest ready clocksource=<current clocksource> kernel=<uname release>
//
// and runs the workload named by the kernel parameter ftvm.workload=NAME
// (default none; see registry) in a child process: itself, re-executed with
// FTVM_GUEST_ROLE=workload. When the child ends, however it ends (return,
// error, panic in any goroutine, signal), PID 1 syncs and unmounts the disk,
// prints
//
//	ftvm-guest exit status=<n>
//
// and powers the machine off. PID 1 itself never exits, because that would
// end in a kernel panic without a word about why.
//
// Kernel command line parameters (a later one overrides an earlier one):
//
//	ftvm.workload=NAME  workload to run: none (default), sleep, crash, kv,
//	                    tsc, rdtscp (checks of the RDTSC emulation, tsc.go),
//	                    raftkv, mapreduce-coordinator, mapreduce-worker
//	ftvm.seconds=N      run time of the sleep workload
//	ftvm.ip=ADDR/LEN    static IPv4 address of eth0, e.g. 192.168.127.2/24
//	ftvm.ip=dhcp        configure eth0 by DHCPv4 (gvisor-tap-vsock's switch
//	                    runs a server on 192.168.127.1); no renewal
//	ftvm.gw=ADDR        default route (static: must be in the subnet; dhcp:
//	                    overrides the server's router option)
//	ftvm.dns=A[,B...]   nameservers for /etc/resolv.conf (dhcp: overrides
//	                    the server's)
//	ftvm.disk=/dev/X    block device to mount on /data; failing to mount an
//	                    explicitly named disk fails the boot. Default: mount
//	                    /dev/vda if it exists, and carry on without /data if
//	                    the mount fails. ftvm.disk=none skips the disk.
//	ftvm.fs=TYPE        filesystem of the disk (default ext4)
//	ftvm.port=N         TCP port of the kv workload, the MapReduce
//	                    coordinator and a worker's file server (default 7000)
//
// Distributed workloads, one guest per replica or role (raftkv.go,
// mapreduce.go):
//
//	ftvm.workload=raftkv                  a replica of the Raft key/value
//	                                      service; needs a disk (Raft's state)
//	ftvm.peers=IP:PORT,IP:PORT,...        every replica, the same list on all
//	ftvm.id=N                             this replica's index in ftvm.peers
//	ftvm.election-ms=N                    Raft's election timeout (default 300;
//	                                      heartbeat, RPC and op timeouts scale)
//	ftvm.snapshot-bytes=N                 snapshot when Raft's state reaches N
//	                                      bytes (default 65536, 0 never)
//	ftvm.workload=mapreduce-coordinator   runs one job, prints its output
//	ftvm.app=wordcount|index              the application (default wordcount)
//	ftvm.nreduce=N                        reduce tasks (default 3)
//	ftvm.seed=N ftvm.splits=M             make M input splits from seed N
//	                                      (default: the files in /data/input)
//	ftvm.task-timeout-ms=N                reassign a task after N ms (10000)
//	ftvm.workers=N                        start once N workers asked (0)
//	ftvm.workload=mapreduce-worker        runs tasks until the job is done
//	ftvm.coordinator=IP:PORT              where the coordinator listens
//
// Without ftvm.ip only lo is brought up. With it, /init waits up to 10s for
// eth0 to appear (a virtio-net device, declared with virtio_mmio.device=)
// and fails the boot with an error line if it does not.
//
// Exit statuses: 0 success, 1 workload error, 2 bad command line (no ready
// line), 3 workload panic (recovered), 4 guest setup failed (network, or
// the disk named by ftvm.disk; no ready line), 128+N killed by signal N,
// anything else as the child process exited (Go's runtime exits 2 on an
// unrecovered panic in another goroutine).
//
// The kv workload (package images/workloads/kv) serves a line protocol on
// ftvm.port with its log in /data/kv.log, fsync'd before every OK, or in
// memory when no disk is mounted.
//
// With FTVM_GUEST_ROLE=list-workloads it prints the workload names, one a
// line, and exits (the image builder records them in the manifest).
//
// Run as an ordinary process (not PID 1, for tests) it mounts nothing,
// configures no network, reads the command line from $FTVM_GUEST_CMDLINE if
// set and the data directory from $FTVM_GUEST_DATADIR, and exits with the
// workload's status instead of powering off.
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
	dataDirEnv = "FTVM_GUEST_DATADIR"
	clockPath  = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
)

func main() {
	switch os.Getenv(roleEnv) {
	case "workload":
		os.Exit(workloadMain(os.Stdout))
	case "list-workloads":
		// The image builder runs the built /init on the host this way and
		// records the names in the manifest, so ftctl can refuse an
		// unknown ftvm.workload= before booting anything.
		for _, name := range workloadNames(registry()) {
			fmt.Println(name)
		}
		os.Exit(0)
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
	cmdline, err := readCmdline(pid1)
	if err != nil {
		fmt.Fprintf(out, "ftvm-guest error: %v\n", err)
		return 2
	}
	cfg, err := ParseCmdline(cmdline, registry())
	if err != nil {
		fmt.Fprintf(out, "ftvm-guest error: %v\n", err)
		return 2
	}
	// Outside PID 1 (tests) the host's network and disks are not ours to
	// configure; the data directory comes from the inherited environment.
	dataDir := os.Getenv(dataDirEnv)
	if pid1 {
		g, err := setUpGuest(context.Background(), cfg, out)
		// Registered before the error check: a disk mounted before a
		// later step failed is unmounted too.
		defer g.tearDown(out)
		if err != nil {
			fmt.Fprintf(out, "ftvm-guest error: %v\n", err)
			return 4
		}
		dataDir = g.mountPoint
	}
	fmt.Fprintln(out, tscLine(sampleTSCs(3)))
	fmt.Fprintln(out, readyLine(readClocksource(), kernelRelease()))
	return runChild(out, cmdline, dataDir)
}

// guestSetup is what PID 1 set up before the workload and undoes after.
type guestSetup struct {
	mountPoint string // "" if no disk is mounted
}

// setUpGuest brings up the network and mounts the disk, printing one
// machine-readable line for each. A failure of something the command line
// asked for explicitly (ftvm.ip, ftvm.disk) is an error; the default disk
// is optional.
func setUpGuest(ctx context.Context, cfg Config, out io.Writer) (guestSetup, error) {
	var g guestSetup
	res, err := bringUpNet(ctx, cfg.Net, "/etc/resolv.conf")
	if err != nil {
		return g, fmt.Errorf("network: %w", err)
	}
	if cfg.Net.Mode != NetNone {
		fmt.Fprintln(out, res.line())
	}
	dc := cfg.Disk
	mounted, err := mountDisk(ctx, dc)
	switch {
	case err != nil && dc.Explicit:
		return g, fmt.Errorf("%w (ftvm.disk=%s was given explicitly)", err, dc.Device)
	case err != nil:
		fmt.Fprintf(out, "ftvm-guest warning: %v; continuing without %s (ftvm.disk=none skips the disk)\n", err, dc.MountPoint)
	case mounted:
		g.mountPoint = dc.MountPoint
		fmt.Fprintf(out, "ftvm-guest disk dev=%s mount=%s fs=%s\n", dc.Device, dc.MountPoint, dc.FSType)
	}
	return g, nil
}

// tearDown unmounts the disk so that the power-off finds it clean.
func (g guestSetup) tearDown(out io.Writer) {
	if g.mountPoint == "" {
		return
	}
	if err := unmountDisk(g.mountPoint); err != nil {
		fmt.Fprintf(out, "ftvm-guest warning: %v\n", err)
	}
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
func runChild(out io.Writer, cmdline, dataDir string) int {
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), roleEnv+"=workload", cmdlineEnv+"="+cmdline, dataDirEnv+"="+dataDir)
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
	cfg.DataDir = os.Getenv(dataDirEnv)
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
