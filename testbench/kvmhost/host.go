package kvmhost

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ftvm/ftvm/images/initramfs"
	"github.com/ftvm/ftvm/internal/hostsetup"
)

// Config describes a nested host. The zero value is usable: the agent is the
// calling executable, which must call AgentMain when IsAgent (TestMain and
// ftctl do).
type Config struct {
	// MemoryMiB is the nested host's RAM; everything placed in it (agent,
	// files) lives in that RAM too. Default 2048.
	MemoryMiB int
	// CPUs of the nested host. Default 1: with QEMU's software CPU a second
	// vCPU mostly slows boot down on a 2-core machine, and with two the
	// nested host crashed running a pair and two guests (QEMU 7.2 MTTCG,
	// host kernel 6.1.0-48: "stack guard page was hit" under
	// svm_vcpu_enter_exit, 2026-12-07).
	CPUs int
	// Agent is the executable that serves the control line inside the host.
	// Default: this process's own executable.
	Agent string
	// Files are host files or directories copied into the host at the same
	// absolute path, so commands can use the paths they have here.
	Files []string
	// Modules are extra kernel modules of the host kernel to load (with
	// their dependencies), after the KVM modules.
	Modules []string
	// BootTimeout bounds the time from starting QEMU to the agent's hello.
	// Default 3 minutes (the machine may be busy building a kernel).
	BootTimeout time.Duration
	// HangGrace is how long past a command's own timeout the host may stay
	// silent before it is declared hung. Default 30s.
	HangGrace time.Duration
	// Kernel overrides the host kernel image (default: Debian's cloud
	// kernel, downloaded once). Its modules must match the cached ones.
	Kernel string
	// Progress receives setup messages (downloads, boot). Default stderr.
	Progress io.Writer
}

func (c *Config) setDefaults() error {
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 2048
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 3 * time.Minute
	}
	if c.HangGrace == 0 {
		c.HangGrace = 30 * time.Second
	}
	if c.Progress == nil {
		c.Progress = os.Stderr
	}
	if c.Agent == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable to use as agent: %w", err)
		}
		c.Agent = exe
	}
	return nil
}

// Host is a running nested KVM host.
type Host struct {
	dir     string
	qemu    *exec.Cmd
	conn    net.Conn
	out     *frameWriter
	hello   helloMsg
	grace   time.Duration
	exited  chan struct{} // closed when QEMU has exited
	waitErr error         // QEMU's exit status, valid after exited

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*pendingCommand
	dead    error // set when the host is unusable; pending commands fail with it
}

type pendingCommand struct {
	stdout, stderr io.Writer
	done           chan exitMsg
}

// Command is one process to run inside the host.
type Command struct {
	Argv []string
	// Env entries are added to the agent's environment.
	Env []string
	// Dir is the working directory inside the host ("" = /).
	Dir string
	// Timeout kills the command (and its process group) when it runs longer.
	// Default 10 minutes.
	Timeout        time.Duration
	Stdout, Stderr io.Writer
}

// Result is how a command ended.
type Result struct {
	ExitCode int
	TimedOut bool
	Duration time.Duration
}

// Start boots a nested host and waits for its agent.
func Start(ctx context.Context, cfg Config) (*Host, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := hostsetup.Ensure(ctx, cfg.Progress, hostRequirements...); err != nil {
		return nil, fmt.Errorf("nested KVM host: %w", err)
	}
	kernel, err := ensureHostKernel(ctx, cfg.Progress)
	if err != nil {
		return nil, fmt.Errorf("nested KVM host: %w", err)
	}
	dir, err := os.MkdirTemp("", "ftvm-kvmhost-")
	if err != nil {
		return nil, fmt.Errorf("nested KVM host: %w", err)
	}
	if cfg.Kernel != "" {
		kernel.Image = cfg.Kernel
	}
	if err := checkBzImage(kernel.Image); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("nested KVM host: %w (a cached download is refetched after deleting it)", err)
	}
	h := &Host{dir: dir, grace: cfg.HangGrace, exited: make(chan struct{}), pending: map[uint64]*pendingCommand{}}
	if err := h.boot(ctx, cfg, kernel); err != nil {
		h.kill()
		os.RemoveAll(dir)
		return nil, err
	}
	return h, nil
}

func (h *Host) boot(ctx context.Context, cfg Config, kernel hostKernel) error {
	initrd := filepath.Join(h.dir, "initrd.gz")
	if err := writeHostInitrd(ctx, initrd, cfg, kernel); err != nil {
		return fmt.Errorf("nested KVM host: build initrd: %w", err)
	}
	sock := filepath.Join(h.dir, "control.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("nested KVM host: listen for control line: %w", err)
	}
	defer ln.Close()

	qemuLog, err := os.Create(filepath.Join(h.dir, "qemu.log"))
	if err != nil {
		return fmt.Errorf("nested KVM host: %w", err)
	}
	defer qemuLog.Close()
	args := []string{
		"-accel", "tcg,thread=multi",
		"-machine", "q35",
		// EPYC with SVM and nested paging is what lets the stock kvm_amd
		// load and run guests at speed under the software CPU.
		"-cpu", "EPYC,+svm,+npt",
		"-smp", fmt.Sprint(cfg.CPUs),
		"-m", fmt.Sprint(cfg.MemoryMiB),
		"-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", kernel.Image,
		"-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 loglevel=4",
		"-chardev", "file,id=console,path=" + h.consolePath(),
		"-serial", "chardev:console",
		"-chardev", "socket,id=control,path=" + sock,
		"-serial", "chardev:control",
	}
	// Not CommandContext: the host must outlive the context of Start, and
	// Close/kill own its end.
	h.qemu = exec.Command("qemu-system-x86_64", args...)
	h.qemu.Stdout = qemuLog
	h.qemu.Stderr = qemuLog
	slog.Debug("starting nested KVM host", "dir", h.dir, "kernel", kernel.Package)
	started := time.Now()
	if err := h.qemu.Start(); err != nil {
		return fmt.Errorf("nested KVM host: start qemu: %w", err)
	}
	go func() {
		h.waitErr = h.qemu.Wait()
		close(h.exited)
	}()

	bootCtx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-bootCtx.Done():
		case <-h.exited:
		}
		ln.Close() // unblocks Accept
	}()
	conn, err := ln.Accept()
	if err != nil {
		return h.bootFailure(bootCtx, "QEMU never connected its control line")
	}
	h.conn = conn
	h.out = &frameWriter{w: conn}
	fr := newFrameReader(conn)
	helloCh := make(chan error, 1)
	go func() {
		t, payload, err := fr.next()
		switch {
		case errors.Is(err, io.EOF):
			helloCh <- errors.New("the control line closed (the host crashed or powered off)")
		case err != nil:
			helloCh <- err
		case t != frameHello:
			helloCh <- fmt.Errorf("first frame was %v, not hello", t)
		default:
			helloCh <- json.Unmarshal(payload, &h.hello)
		}
	}()
	select {
	case err := <-helloCh:
		if err != nil {
			return h.bootFailure(bootCtx, "agent did not say hello: "+err.Error())
		}
	case <-bootCtx.Done():
		return h.bootFailure(bootCtx, "agent did not say hello")
	case <-h.exited:
		return h.bootFailure(bootCtx, "QEMU exited during boot")
	}
	if !h.hello.KVM {
		return fmt.Errorf("nested KVM host booted (%s) but /dev/kvm did not open there: %s\nconsole log:\n%s",
			h.hello.Kernel, h.hello.KVMError, h.ConsoleTail(40))
	}
	fmt.Fprintf(cfg.Progress, "ftvm: nested KVM host up in %.1fs (kernel %s)\n", time.Since(started).Seconds(), h.hello.Kernel)
	go h.readLoop(fr)
	return nil
}

func (h *Host) bootFailure(ctx context.Context, what string) error {
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.Canceled) {
		what += " within the boot timeout"
	}
	h.kill()
	qlog, _ := os.ReadFile(filepath.Join(h.dir, "qemu.log"))
	if q := strings.TrimSpace(filterQEMUWarnings(string(qlog))); q != "" {
		what += "\nqemu: " + q
	}
	return fmt.Errorf("nested KVM host failed to boot: %s\nconsole log:\n%s", what, h.ConsoleTail(30))
}

// filterQEMUWarnings drops TCG's "doesn't support requested feature" lines,
// which the EPYC model always causes and which say nothing about a failure.
func filterQEMUWarnings(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "TCG doesn't support requested feature") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func (h *Host) consolePath() string { return filepath.Join(h.dir, "console.log") }

// Kernel is the nested host's kernel release.
func (h *Host) Kernel() string { return h.hello.Kernel }

// ConsoleTail returns the last n lines the host kernel printed on its
// console. When the kernel panicked or oopsed earlier than that, the lines
// around the first such report come first, since the tail of a panic is a
// stack dump that does not say what happened.
func (h *Host) ConsoleTail(n int) string {
	b, err := os.ReadFile(h.consolePath())
	if err != nil {
		return fmt.Sprintf("(no console log: %v)", err)
	}
	return consoleExcerpt(string(b), n)
}

func consoleExcerpt(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(lines) <= n {
		return strings.Join(lines, "\n")
	}
	tail := lines[len(lines)-n:]
	for i, l := range lines[:len(lines)-n] {
		if strings.Contains(l, "Kernel panic") || strings.Contains(l, "BUG:") || strings.Contains(l, "Oops") {
			head := lines[max(0, i-3):min(i+3, len(lines)-n)]
			return strings.Join(head, "\n") + "\n[...]\n" + strings.Join(tail, "\n")
		}
	}
	return strings.Join(tail, "\n")
}

func (h *Host) readLoop(fr *frameReader) {
	for {
		t, payload, err := fr.next()
		if err != nil {
			h.fail(fmt.Errorf("control line closed: %w", err))
			return
		}
		switch t {
		case frameOutput:
			var m outputMsg
			if json.Unmarshal(payload, &m) != nil {
				continue
			}
			h.mu.Lock()
			p := h.pending[m.ID]
			h.mu.Unlock()
			if p == nil {
				continue
			}
			w := p.stdout
			if m.Stream == 2 {
				w = p.stderr
			}
			if w != nil {
				_, _ = w.Write(m.Data)
			}
		case frameExit:
			var m exitMsg
			if json.Unmarshal(payload, &m) != nil {
				continue
			}
			h.mu.Lock()
			p := h.pending[m.ID]
			delete(h.pending, m.ID)
			h.mu.Unlock()
			if p != nil {
				p.done <- m
			}
		default:
			slog.Warn("unexpected frame from nested host agent", "type", t)
		}
	}
}

// fail marks the host unusable and wakes every waiting command.
func (h *Host) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dead == nil {
		h.dead = err
	}
	for id, p := range h.pending {
		close(p.done)
		delete(h.pending, id)
	}
}

// Run runs a command inside the host and waits for it. A non-zero exit is
// not an error (see Result); an error means the command could not be run
// or the host stopped answering, and it carries the host's console log.
func (h *Host) Run(ctx context.Context, c Command) (Result, error) {
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
	}
	p := &pendingCommand{stdout: c.Stdout, stderr: c.Stderr, done: make(chan exitMsg, 1)}
	h.mu.Lock()
	if h.dead != nil {
		err := h.dead
		h.mu.Unlock()
		return Result{}, fmt.Errorf("nested KVM host is not usable: %w", err)
	}
	h.nextID++
	id := h.nextID
	h.pending[id] = p
	h.mu.Unlock()

	msg := execMsg{ID: id, Argv: c.Argv, Env: c.Env, Dir: c.Dir, TimeoutMS: c.Timeout.Milliseconds()}
	if err := h.out.send(frameExec, msg); err != nil {
		h.fail(err)
		return Result{}, fmt.Errorf("send %q to nested KVM host: %w", c.Argv, err)
	}
	hung := time.NewTimer(c.Timeout + h.grace)
	defer hung.Stop()
	select {
	case m, ok := <-p.done:
		if !ok {
			h.mu.Lock()
			err := h.dead
			h.mu.Unlock()
			return Result{}, fmt.Errorf("run %q: nested KVM host died: %w\nconsole log:\n%s", c.Argv, err, h.ConsoleTail(40))
		}
		if m.Err != "" {
			return Result{}, fmt.Errorf("run %q in nested KVM host: %s", c.Argv, m.Err)
		}
		return Result{ExitCode: m.Code, TimedOut: m.TimedOut, Duration: time.Duration(m.DurationNS)}, nil
	case <-hung.C:
		err := fmt.Errorf("nested KVM host did not report the end of %q within %v (its timeout %v plus %v grace): the host is hung\nconsole log:\n%s",
			c.Argv, c.Timeout+h.grace, c.Timeout, h.grace, h.ConsoleTail(40))
		h.fail(err)
		h.kill()
		return Result{}, err
	case <-ctx.Done():
		h.mu.Lock()
		delete(h.pending, id)
		h.mu.Unlock()
		return Result{}, fmt.Errorf("run %q in nested KVM host: %w", c.Argv, ctx.Err())
	}
}

// Close asks the host to power off, waiting for running commands, and
// removes its files. It kills QEMU if the host does not power off in time.
func (h *Host) Close() error {
	defer os.RemoveAll(h.dir)
	h.mu.Lock()
	dead := h.dead
	h.mu.Unlock()
	var err error
	if dead == nil {
		if err = h.out.send(frameShutdown, struct{}{}); err == nil {
			select {
			case <-h.exited:
				if h.waitErr != nil {
					err = fmt.Errorf("nested KVM host exited with %v\nconsole log:\n%s", h.waitErr, h.ConsoleTail(20))
				}
			case <-time.After(30 * time.Second):
				err = fmt.Errorf("nested KVM host did not power off within 30s; killed it\nconsole log:\n%s", h.ConsoleTail(20))
			}
		}
	}
	h.fail(errors.New("host closed"))
	h.kill()
	return err
}

func (h *Host) kill() {
	if h.conn != nil {
		h.conn.Close()
	}
	if h.qemu == nil || h.qemu.Process == nil {
		return
	}
	select {
	case <-h.exited:
		return
	default:
	}
	_ = h.qemu.Process.Kill()
	<-h.exited
}

// writeHostInitrd writes the nested host's initramfs: busybox, the KVM
// modules, an /init that loads them, the agent and the configured files.
func writeHostInitrd(ctx context.Context, path string, cfg Config, kernel hostKernel) error {
	modules, err := moduleLoadOrder(kernel.Modules, append(append([]string(nil), kvmModules...), cfg.Modules...))
	if err != nil {
		return err
	}
	var files []string
	seen := map[string]bool{}
	addWithLibs := func(p string) error {
		if seen[p] {
			return nil
		}
		libs, err := sharedLibraries(ctx, p)
		if err != nil {
			return err
		}
		for _, q := range append([]string{p}, libs...) {
			if !seen[q] {
				seen[q] = true
				files = append(files, q)
			}
		}
		return nil
	}
	if err := addWithLibs("/bin/busybox"); err != nil {
		return err
	}
	agent, err := filepath.Abs(cfg.Agent)
	if err != nil {
		return err
	}
	if err := addWithLibs(agent); err != nil {
		return err
	}
	for _, f := range cfg.Files {
		abs, err := filepath.Abs(f)
		if err != nil {
			return err
		}
		// A command is often a symlink (/usr/bin/sh -> dash): follow it at the
		// top; the file is copied in under the name it was given.
		info, err := os.Stat(abs)
		if err != nil {
			return fmt.Errorf("file for nested host: %w", err)
		}
		if info.Mode().IsRegular() {
			if err := addWithLibs(abs); err != nil {
				return err
			}
			continue
		}
		if err := filepath.Walk(abs, func(p string, info os.FileInfo, err error) error {
			if err != nil {
				return fmt.Errorf("file for nested host: %w", err)
			}
			if info.Mode().IsRegular() {
				return addWithLibs(p)
			}
			return nil
		}); err != nil {
			return err
		}
	}

	var script bytes.Buffer
	script.WriteString(hostInitHead)
	for _, m := range modules {
		fmt.Fprintf(&script, "insmod %s || echo 'ftvm-kvmhost: insmod %s failed'\n", guestModulePath(m), filepath.Base(m))
	}
	fmt.Fprintf(&script, "echo 'ftvm-kvmhost: modules loaded'\nexport %s=%s\nexec %s\n", roleEnv, roleAgent, agent)

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		return err
	}
	w := initramfs.NewWriter(zw)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "root", "bin", "sbin", "usr/bin", "usr/sbin", "etc"} {
		if err := w.AddDir(d, 0o755); err != nil {
			return err
		}
	}
	if err := w.AddFile("init", 0o755, script.Bytes()); err != nil {
		return err
	}
	if err := w.AddFile("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")); err != nil {
		return err
	}
	for _, m := range modules {
		if err := w.AddHostFile(guestModulePath(m), m); err != nil {
			return err
		}
	}
	for _, p := range files {
		if err := w.AddHostFile(p, p); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func guestModulePath(hostPath string) string { return "/lib/modules/" + filepath.Base(hostPath) }

const hostInitHead = `#!/bin/busybox sh
# /init of an ftvm nested KVM host, written by testbench/kvmhost.
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ip link set lo up
export HOME=/root TMPDIR=/tmp PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
`

// checkBzImage verifies the x86 boot protocol header ("HdrS" at 0x202) so a
// truncated or wrong kernel file is named as such instead of failing in QEMU.
func checkBzImage(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("host kernel: %w", err)
	}
	defer f.Close()
	var hdr [0x206]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || string(hdr[0x202:0x206]) != "HdrS" {
		return fmt.Errorf("host kernel %s is not a bzImage (no HdrS boot header)", path)
	}
	return nil
}
