package images

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/initramfs"
	"github.com/ftvm/ftvm/internal/hostsetup"
)

// TestImage builds a real image (the kernel comes from the cache, or is
// built first: about 8 minutes on 2 cores, so run with a long -timeout),
// verifies it, looks inside the initramfs, boots it under QEMU's software
// CPU, and finally corrupts it to see Inspect's error.
func TestImage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	t.Log("building the image; if the kernel is not cached yet this takes about 8 minutes")
	start := time.Now()
	m, err := Build(ctx, Options{OutDir: dir, Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image built in %s", time.Since(start).Round(time.Millisecond))

	t.Run("inspect", func(t *testing.T) {
		got, err := Inspect(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got.Cmdline != DefaultCmdline || got.KernelConfigHash != m.KernelConfigHash || got.LinuxSourceVersion == "" {
			t.Fatalf("manifest %+v", got)
		}
		// The builder asked the real /init for its workloads.
		for _, w := range []string{"none", "kv", "sleep", "crash"} {
			if !slices.Contains(got.Workloads, w) {
				t.Errorf("manifest workloads %q lack %q", got.Workloads, w)
			}
		}
		if err := got.CheckWorkload("ftvm.workload=nosuch"); err == nil {
			t.Error("the built image accepts an unknown workload")
		}
		for _, name := range []string{VmlinuxName, BzImageName, InitrdName} {
			sum, err := fileSHA256(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if got.SHA256[name] != sum {
				t.Errorf("%s: manifest sha256 %s, file %s", name, got.SHA256[name], sum)
			}
		}
	})

	t.Run("initrd round trip", func(t *testing.T) {
		raw, err := ReadInitrd(filepath.Join(dir, InitrdName))
		if err != nil {
			t.Fatal(err)
		}
		r := initramfs.NewReader(bytes.NewReader(raw))
		var out bytes.Buffer
		w := initramfs.NewWriter(&out)
		entries := map[string]initramfs.Header{}
		for {
			h, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			entries[h.Name] = h
			if err := w.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, r); err != nil {
				t.Fatal(err)
			}
		}
		tr, _ := r.Trailer()
		if err := w.WriteHeader(tr); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), raw) {
			t.Fatalf("initramfs does not round trip byte for byte (%d vs %d bytes)", out.Len(), len(raw))
		}
		init := entries["init"]
		if init.Mode != initramfs.ModeRegular|0o755 || init.Size < 100_000 {
			t.Errorf("init: %+v", init)
		}
		if c := entries["dev/console"]; c.Mode != initramfs.ModeCharDevice|0o600 || c.RDevMajor != 5 || c.RDevMinor != 1 {
			t.Errorf("dev/console: %+v", c)
		}
		for _, d := range []string{"dev", "proc", "sys", "tmp", "run"} {
			if !entries[d].IsDir() {
				t.Errorf("%s is not a directory: %+v", d, entries[d])
			}
		}
	})

	t.Run("boot under QEMU", func(t *testing.T) {
		// q35 boots bzImage through SeaBIOS and has a real ACPI PM timer
		// (its FADT carries one): asking for clocksource=acpi_pm proves the
		// PM timer driver works. Its DSDT needs PCI config space, so pci=off
		// from the default cmdline is dropped there.
		// q35 with vmlinux (an ELF with the PVH note) makes QEMU enter the
		// kernel through PVH, as our VMM will.
		for _, tc := range []struct {
			name, machine, kernel, cmdline string
			status                         int
			clocksource                    string
		}{
			{"q35 bzImage sleep", "q35", m.BzImage,
				strings.Replace(m.Cmdline, " pci=off", "", 1) + " clocksource=acpi_pm ftvm.workload=sleep ftvm.seconds=1", 0, "acpi_pm"},
			{"q35 PVH vmlinux crash", "q35", m.Kernel,
				strings.Replace(m.Cmdline, " pci=off", "", 1) + " ftvm.workload=crash", 3, ""},
		} {
			start := time.Now()
			out, err := bootQEMU(t, "-machine", tc.machine, "-kernel", filepath.Join(dir, tc.kernel),
				"-initrd", filepath.Join(dir, m.Initrd), "-append", tc.cmdline)
			elapsed := time.Since(start).Round(time.Millisecond)
			if err != nil {
				t.Fatalf("%s: %v\nconsole:\n%s", tc.name, err, out)
			}
			ready := regexp.MustCompile(`ftvm-guest ready clocksource=(\S+) kernel=\S+`).FindStringSubmatch(out)
			exit := fmt.Sprintf("ftvm-guest exit status=%d", tc.status)
			if ready == nil || !strings.Contains(out, exit) {
				t.Fatalf("%s: console lacks the ready line or %q:\n%s", tc.name, exit, out)
			}
			if tc.clocksource != "" && ready[1] != tc.clocksource {
				t.Errorf("%s: clocksource %s, want %s", tc.name, ready[1], tc.clocksource)
			}
			if !strings.Contains(out, "reboot: Power down") {
				t.Errorf("%s: the guest did not power off through ACPI:\n%s", tc.name, out)
			}
			t.Logf("%s: booted, ran and powered off in %s: %q, %q", tc.name, elapsed, ready[0], exit)
		}
	})

	t.Run("microvm network and disk", func(t *testing.T) { testMicrovmNetDisk(t, dir, m) })

	t.Run("corrupt", func(t *testing.T) {
		p := filepath.Join(dir, InitrdName)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0xff
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = Inspect(dir)
		if err == nil || !strings.Contains(err.Error(), "initrd.img: sha256") || !strings.Contains(err.Error(), "rebuild with: ftctl image build") {
			t.Fatalf("Inspect of a corrupt initrd: %v", err)
		}
		t.Logf("corrupt initrd reported as: %v", err)
	})
}

// bootQEMU runs QEMU's software CPU (no KVM: this machine's /dev/kvm
// cannot run a Linux guest) with the given machine and kernel arguments and
// returns the console output once the guest powers off.
func bootQEMU(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if err := hostsetup.Ensure(context.Background(), os.Stderr, hostsetup.Requirement{Path: "qemu-system-x86_64", Package: "qemu-system-x86"}); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", append([]string{
		"-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("guest did not power off within 90s")
	}
	if err != nil {
		return out.String(), fmt.Errorf("qemu: %w", err)
	}
	return out.String(), nil
}
