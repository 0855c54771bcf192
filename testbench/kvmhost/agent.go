package kvmhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Environment variables that tie the pieces together. The host's /init
// starts the agent with roleEnv=roleAgent; the agent runs every command with
// roleEnv=roleInside, which is how code (RanElsewhere) knows it already runs
// on a KVM host and must not delegate again.
const (
	roleEnv    = "FTVM_KVMHOST_ROLE"
	roleAgent  = "agent"
	roleInside = "inside"
	// lineEnv names the agent's control line; the default is the host's
	// second serial port.
	lineEnv     = "FTVM_KVMHOST_LINE"
	defaultLine = "/dev/ttyS1"
)

// IsAgent reports whether this process was started as the agent of a nested
// host. A binary that is handed to Start as its agent (a test binary through
// TestMain, ftctl through its main) must call AgentMain when this is true.
func IsAgent() bool { return os.Getenv(roleEnv) == roleAgent }

// Inside reports whether this process runs inside a nested host (started
// by its agent).
func Inside() bool { return os.Getenv(roleEnv) == roleInside }

// AgentMain serves the control line ($FTVM_KVMHOST_LINE, default the
// host's second serial port) until told to shut down, then powers the host
// off. It returns only on error, with the exit code to use.
func AgentMain() int {
	line := os.Getenv(lineEnv)
	if line == "" {
		line = defaultLine
	}
	if err := serveAgent(context.Background(), line); err != nil {
		fmt.Fprintln(os.Stderr, "ftvm-kvmhost agent:", err)
		return 1
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintln(os.Stderr, "ftvm-kvmhost agent: power off:", err)
		return 1
	}
	return 0
}

func serveAgent(ctx context.Context, linePath string) error {
	line, err := os.OpenFile(linePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open control line: %w", err)
	}
	defer line.Close()
	if err := makeRaw(int(line.Fd())); err != nil {
		return fmt.Errorf("control line %s: %w", linePath, err)
	}
	a := &agent{out: &frameWriter{w: line}}
	hello := helloMsg{Kernel: kernelRelease()}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		hello.KVMError = err.Error()
	} else {
		hello.KVM = true
		f.Close()
	}
	if err := a.out.send(frameHello, hello); err != nil {
		return err
	}
	fr := newFrameReader(line)
	for {
		t, payload, err := fr.next()
		if err != nil {
			return fmt.Errorf("read control line: %w", err)
		}
		switch t {
		case frameExec:
			var m execMsg
			if err := json.Unmarshal(payload, &m); err != nil {
				slog.Error("bad exec frame", "err", err)
				continue
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.run(ctx, m)
			}()
		case frameShutdown:
			a.wg.Wait()
			return nil
		default:
			slog.Warn("unexpected frame on agent side", "type", t)
		}
	}
}

type agent struct {
	out *frameWriter
	wg  sync.WaitGroup
}

func (a *agent) run(ctx context.Context, m execMsg) {
	start := time.Now()
	exit := exitMsg{ID: m.ID}
	defer func() {
		exit.DurationNS = int64(time.Since(start))
		if err := a.out.send(frameExit, exit); err != nil {
			slog.Error("report exit", "id", m.ID, "err", err)
		}
	}()
	if len(m.Argv) == 0 {
		exit.Code, exit.Err = -1, "empty command"
		return
	}
	if m.Dir != "" {
		// Callers pass the directory they have on their side (a test's
		// package directory); only what was copied in exists here.
		if err := os.MkdirAll(m.Dir, 0o755); err != nil {
			exit.Code, exit.Err = -1, fmt.Sprintf("create working directory: %v", err)
			return
		}
	}
	cmd := exec.CommandContext(ctx, m.Argv[0], m.Argv[1:]...)
	cmd.Env = append(append(os.Environ(), roleEnv+"="+roleInside), m.Env...)
	cmd.Dir = m.Dir
	cmd.Stdout = &streamWriter{a: a, id: m.ID, stream: 1}
	cmd.Stderr = &streamWriter{a: a, id: m.ID, stream: 2}
	// Its own process group, so a timeout kills the command's children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		exit.Code, exit.Err = -1, err.Error()
		return
	}
	var timedOut bool
	var mu sync.Mutex
	if m.TimeoutMS > 0 {
		timer := time.AfterFunc(time.Duration(m.TimeoutMS)*time.Millisecond, func() {
			mu.Lock()
			timedOut = true
			mu.Unlock()
			_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		})
		defer timer.Stop()
	}
	err := cmd.Wait()
	mu.Lock()
	exit.TimedOut = timedOut
	mu.Unlock()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		exit.Code = ee.ExitCode()
		if exit.Code < 0 {
			exit.Code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
	default:
		exit.Code, exit.Err = -1, err.Error()
	}
}

// streamWriter forwards a command's output as frames. Large writes are
// split so one frame stays small on a slow serial line.
type streamWriter struct {
	a      *agent
	id     uint64
	stream int
}

func (w *streamWriter) Write(p []byte) (int, error) {
	const chunk = 16 << 10
	for off := 0; off < len(p); off += chunk {
		end := min(off+chunk, len(p))
		if err := w.a.out.send(frameOutput, outputMsg{ID: w.id, Stream: w.stream, Data: p[off:end]}); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

var _ io.Writer = (*streamWriter)(nil)

// makeRaw puts a tty into raw mode (as cfmakeraw does): no echo, no line
// editing, no CR/LF translation, 8-bit clean.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("get termios: %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CLOCAL | unix.CREAD | unix.B115200
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("set termios: %w", err)
	}
	return nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
