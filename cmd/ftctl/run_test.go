package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images"
)

// runFtctlTimeout runs ftctl with args and a deadline: a command that
// should fail at once but waits (listens, dials) fails the test instead.
func runFtctlTimeout(t *testing.T, d time.Duration, args ...string) (stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := newRootCommand()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(ctx)
	if ctx.Err() != nil {
		t.Fatalf("ftctl %s still running after %v (stderr: %s)", strings.Join(args, " "), d, errb.String())
	}
	return errb.String(), err
}

// imageWithWorkloads writes an image directory that passes Inspect (the
// test binary as the ELF kernel, a minimal bzImage header, a real initrd)
// and lists workloads in its manifest.
func imageWithWorkloads(t *testing.T, workloads ...string) string {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bz := make([]byte, 4096)
	copy(bz[0x202:], "HdrS")
	bz[0x1f1], bz[0x1f4] = 1, 4
	src := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var initrd bytes.Buffer
	if err := images.WriteInitrd(&initrd, src); err != nil {
		t.Fatal(err)
	}
	m := images.Manifest{Format: images.ManifestFormat, Kernel: images.VmlinuxName, BzImage: images.BzImageName,
		Initrd: images.InitrdName, Cmdline: images.DefaultCmdline, SHA256: map[string]string{}, Workloads: workloads}
	for name, data := range map[string][]byte{images.VmlinuxName: vmlinux, images.BzImageName: bz, images.InitrdName: initrd.Bytes()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		m.SHA256[name] = hex.EncodeToString(sum[:])
	}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, images.ManifestName), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRunValidatesBeforeTouchingTheConsoleFile: a run refused for any flag
// leaves an existing --console file as it was (it once truncated it first:
// a disk image was emptied by a mistyped flag), and a file is appended to.
func TestRunValidatesBeforeTouchingTheConsoleFile(t *testing.T) {
	img := imageWithWorkloads(t, "kv", "none")
	precious := []byte("a disk image, or last week's console log\n")
	for name, args := range map[string][]string{
		"missing image":    {"--image", filepath.Join(t.TempDir(), "nope")},
		"bad memory":       {"--image", img, "--mem", "1"},
		"bad role":         {"--image", img, "--role", "primry"},
		"unknown workload": {"--image", img, "--append", "ftvm.workload=kvv"},
		"missing disk":     {"--image", img, "--storage", t.TempDir(), "--disk", "nope"},
		"bad IP":           {"--image", img, "--ip", "10.0.0.300/24"},
	} {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "console")
			if err := os.WriteFile(file, precious, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := runFtctlTimeout(t, 30*time.Second, append([]string{"run", "--console", file}, args...)...)
			if err == nil {
				t.Fatal("accepted")
			}
			if got, _ := os.ReadFile(file); !bytes.Equal(got, precious) {
				t.Fatalf("the --console file changed to %q (error was %v)", got, err)
			}
		})
	}
	t.Run("appends", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "console")
		os.WriteFile(file, precious, 0o644)
		out, closeConsole, err := openConsole(newRootCommand(), file)
		if err != nil {
			t.Fatal(err)
		}
		out.Write([]byte("guest line\n"))
		closeConsole()
		if got, _ := os.ReadFile(file); string(got) != string(precious)+"guest line\n" {
			t.Fatalf("file after a run: %q", got)
		}
	})
	t.Run("not a regular file", func(t *testing.T) {
		if _, _, err := openConsole(newRootCommand(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("a directory as --console: %v", err)
		}
	})
}

// TestRunRefusesAnUnknownWorkloadOnTheHost: the image's manifest lists the
// workloads its /init has; another name is refused before boot, naming them.
func TestRunRefusesAnUnknownWorkloadOnTheHost(t *testing.T) {
	img := imageWithWorkloads(t, "cpu", "kv", "none")
	_, err := runFtctlTimeout(t, 30*time.Second, "run", "--image", img, "--console", "none", "--append", "ftvm.workload=kvv")
	if err == nil || !strings.Contains(err.Error(), "ftvm.workload=kvv: this image's /init has no such workload; it has cpu, kv, none") {
		t.Fatalf("unknown workload: %v", err)
	}
}

// TestBackupChecksItsMachineBeforeListening: a backup whose own image, memory
// or disk is wrong says so at once instead of listening for a primary it
// could never follow.
func TestBackupChecksItsMachineBeforeListening(t *testing.T) {
	img := imageWithWorkloads(t, "kv", "none")
	sock := filepath.Join(t.TempDir(), "log.sock")
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"missing image": {[]string{"--image", filepath.Join(t.TempDir(), "nope")}, "nope"},
		"bad memory":    {[]string{"--image", img, "--mem", "5000"}, "memory 5000 MiB"},
		"missing disk":  {[]string{"--image", img, "--storage", t.TempDir(), "--disk", "data"}, "data"},
		"bad MAC":       {[]string{"--image", img, "--net", "/tmp/x.sock", "--mac", "zz"}, `MAC "zz"`},
	} {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"run", "--role", "backup", "--listen", "unix:" + sock, "--console", "none"}, tc.args...)
			stderr, err := runFtctlTimeout(t, 30*time.Second, args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to name %q", err, tc.want)
			}
			if strings.Contains(stderr, "listening") {
				t.Fatalf("the backup listened before refusing: %s", stderr)
			}
			if _, err := os.Stat(sock); err == nil {
				t.Fatal("the backup created its socket before refusing")
			}
		})
	}
}
