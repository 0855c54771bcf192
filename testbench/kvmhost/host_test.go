package kvmhost_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// These tests boot their own hosts (not the shared one of RanElsewhere) so
// they can also break them.
func TestMain(m *testing.M) { os.Exit(kvmhost.TestMain(m)) }

func startHost(t *testing.T, cfg kvmhost.Config) *kvmhost.Host {
	t.Helper()
	cfg.Progress = testWriter{t}
	start := time.Now()
	h, err := kvmhost.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nested host %s booted in %v", h.Kernel(), time.Since(start).Round(time.Millisecond))
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func run(t *testing.T, h *kvmhost.Host, c kvmhost.Command) (kvmhost.Result, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	res, err := h.Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return res, stdout.String(), stderr.String()
}

func TestHostRunsCommands(t *testing.T) {
	h := startHost(t, kvmhost.Config{})

	res, out, _ := run(t, h, kvmhost.Command{Argv: []string{"sh", "-c", "ls -l /dev/kvm; grep -c -w svm /proc/cpuinfo; cat /proc/modules | cut -d' ' -f1"}})
	t.Logf("inside:\n%s", out)
	if res.ExitCode != 0 || !strings.Contains(out, "/dev/kvm") || !strings.Contains(out, "kvm_amd") {
		t.Fatalf("exit %d, output %q: want /dev/kvm and kvm_amd loaded", res.ExitCode, out)
	}

	res, out, errOut := run(t, h, kvmhost.Command{Argv: []string{"sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"}})
	if res.ExitCode != 3 || out != "to-stdout\n" || errOut != "to-stderr\n" {
		t.Fatalf("exit %d stdout %q stderr %q", res.ExitCode, out, errOut)
	}

	// Output larger than one frame arrives whole and in order.
	res, out, _ = run(t, h, kvmhost.Command{Argv: []string{"sh", "-c", "seq 1 20000"}})
	if res.ExitCode != 0 || !strings.HasPrefix(out, "1\n2\n") || !strings.HasSuffix(out, "\n19999\n20000\n") || strings.Count(out, "\n") != 20000 {
		t.Fatalf("seq output damaged: %d lines, exit %d", strings.Count(out, "\n"), res.ExitCode)
	}

	// Inside the host, commands know where they run.
	_, out, _ = run(t, h, kvmhost.Command{Argv: []string{"sh", "-c", "echo $" + kvmhost.RoleEnv}})
	if strings.TrimSpace(out) != kvmhost.RoleInside {
		t.Fatalf("%s = %q inside, want %q", kvmhost.RoleEnv, out, kvmhost.RoleInside)
	}

	res, _, _ = run(t, h, kvmhost.Command{Argv: []string{"sleep", "60"}, Timeout: 2 * time.Second})
	if !res.TimedOut || res.ExitCode != 128+int(syscall.SIGKILL) {
		t.Fatalf("sleep 60 with a 2s timeout: %+v", res)
	}

	if _, err := h.Run(context.Background(), kvmhost.Command{Argv: []string{"/no/such/program"}}); err == nil || !strings.Contains(err.Error(), "/no/such/program") {
		t.Fatalf("missing program: err = %v", err)
	}

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kvmhost.HostDir(h)); !os.IsNotExist(err) {
		t.Fatalf("host directory %s left behind", kvmhost.HostDir(h))
	}
}

func TestHostCarriesFiles(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("ftvm"), 1<<18) // 1 MiB
	if err := os.WriteFile(filepath.Join(dir, "blob"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	h := startHost(t, kvmhost.Config{Files: []string{dir}})
	defer h.Close()
	res, out, _ := run(t, h, kvmhost.Command{Argv: []string{"md5sum", filepath.Join(dir, "blob")}})
	if res.ExitCode != 0 || len(out) < 32 {
		t.Fatalf("md5sum: exit %d %q", res.ExitCode, out)
	}
	_, hostSum, _ := runHost(t, "md5sum", filepath.Join(dir, "blob"))
	if strings.Fields(out)[0] != strings.Fields(hostSum)[0] {
		t.Fatalf("file differs inside the host: %s vs %s", out, hostSum)
	}
}

func TestHostHangIsReported(t *testing.T) {
	h := startHost(t, kvmhost.Config{HangGrace: 2 * time.Second})
	defer h.Close()
	// Freeze the whole machine: the agent cannot answer any more.
	if err := kvmhost.HostProcess(h).Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	_, err := h.Run(context.Background(), kvmhost.Command{Argv: []string{"true"}, Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "hung") || !strings.Contains(err.Error(), "console log") {
		t.Fatalf("err = %v, want a hang report with the console log", err)
	}
	if _, err := h.Run(context.Background(), kvmhost.Command{Argv: []string{"true"}}); err == nil {
		t.Fatal("a hung host accepted another command")
	}
}

func TestHostBootFailureShowsConsole(t *testing.T) {
	// An agent that exits at once makes /init exit: the kernel panics.
	_, err := kvmhost.Start(context.Background(), kvmhost.Config{Agent: "/bin/false", Progress: testWriter{t}, BootTimeout: time.Minute})
	if err == nil {
		t.Fatal("boot with a dying agent succeeded")
	}
	if !strings.Contains(err.Error(), "Attempted to kill init") {
		t.Fatalf("error does not show the kernel panic from the console:\n%v", err)
	}
	t.Logf("reported as:\n%v", err)

	bad := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(bad, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = kvmhost.Start(context.Background(), kvmhost.Config{Kernel: bad, Progress: testWriter{t}, BootTimeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "not a bzImage") || !strings.Contains(err.Error(), bad) {
		t.Fatalf("corrupt kernel: err = %v", err)
	}
	t.Logf("corrupt kernel reported as:\n%v", err)
}

func runHost(t *testing.T, name string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return 0, stdout.String(), stderr.String()
}
