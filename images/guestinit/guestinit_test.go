package main

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestSplitCmdline(t *testing.T) {
	for in, want := range map[string][]string{
		"console=ttyS0 reboot=k  panic=-1\n": {"console=ttyS0", "reboot=k", "panic=-1"},
		`a="b c" d`:                          {"a=b c", "d"},
		"":                                   nil,
		`x=""`:                               {"x="},
	} {
		if got := SplitCmdline(in); !reflect.DeepEqual(got, want) {
			t.Errorf("SplitCmdline(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	known := registry()
	cfg, err := ParseCmdline("console=ttyS0 lpj=1000 ftvm.workload=sleep ftvm.seconds=3 ftvm.extra=\"x y\"\n", known)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Workload != "sleep" || cfg.Seconds != 3 || cfg.Params["extra"] != "x y" {
		t.Fatalf("%+v", cfg)
	}
	cfg, err = ParseCmdline("console=ttyS0", known)
	if err != nil || cfg.Workload != "none" || cfg.Seconds != 0 {
		t.Fatalf("default: %+v %v", cfg, err)
	}
	cfg, err = ParseCmdline("ftvm.workload=none ftvm.workload=sleep", known)
	if err != nil || cfg.Workload != "sleep" {
		t.Fatalf("later parameter must win: %+v %v", cfg, err)
	}
	for in, want := range map[string]string{
		"ftvm.workload=bogus": `ftvm.workload="bogus" is not a known workload (have: cpu, crash, db, kv, mapreduce-coordinator, mapreduce-worker, memwrite, none, raftkv, rdtscp, sleep, tsc)`,
		"ftvm.seconds=-1":     `ftvm.seconds="-1" is not a non-negative integer`,
		"ftvm.seconds=x":      `ftvm.seconds="x"`,
	} {
		if _, err := ParseCmdline(in, known); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseCmdline(%q) = %v, want error containing %q", in, err, want)
		}
	}
}

func TestRunWorkload(t *testing.T) {
	var out bytes.Buffer
	ctx := context.Background()
	if s := runWorkload(ctx, Config{Workload: "sleep", Seconds: 1}, sleepWorkload, &out); s != 0 {
		t.Fatalf("sleep: status %d\n%s", s, out.String())
	}
	if !strings.Contains(out.String(), "ftvm-guest sleep step=1/1 elapsed=1") {
		t.Fatalf("sleep output: %q", out.String())
	}
	out.Reset()
	if s := runWorkload(ctx, Config{Workload: "crash"}, registry()["crash"], &out); s != 3 || !strings.Contains(out.String(), "panicked") {
		t.Fatalf("crash: status %d\n%s", s, out.String())
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if s := runWorkload(cctx, Config{Workload: "sleep", Seconds: 5}, sleepWorkload, &out); s != 1 {
		t.Fatalf("cancelled sleep: status %d", s)
	}
}

func TestReadyLine(t *testing.T) {
	if got := readyLine("acpi_pm\n", "6.1.0 ftvm"); got != "ftvm-guest ready clocksource=acpi_pm kernel=6.1.0_ftvm" {
		t.Fatalf("%q", got)
	}
	if got := readyLine("", ""); got != "ftvm-guest ready clocksource=unknown kernel=unknown" {
		t.Fatalf("%q", got)
	}
}

// TestBinary builds /init the way the image builder does and runs it as an
// ordinary process: the supervisor/child split and the exit statuses.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "init")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("init is dynamically linked; the initramfs has no loader")
		}
	}
	f.Close()
	ready := regexp.MustCompile(`(?m)^ftvm-guest tsc rdtsc=(emulated|hardware|unavailable)( .*)?\nftvm-guest ready clocksource=\S+ kernel=\S+$`)
	for _, tc := range []struct {
		cmdline string
		status  int
		want    string
	}{
		{"console=ttyS0", 0, ""},
		{"ftvm.workload=sleep ftvm.seconds=1", 0, "step=1/1"},
		{"ftvm.workload=cpu ftvm.seconds=1", 0, "ftvm-guest cpu second=1 rounds="},
		{"ftvm.workload=crash", 3, "panicked"},
		{"ftvm.workload=nope", 2, "not a known workload"},
		{"ftvm.workload=kv ftvm.port=99999", 2, "ftvm.port=\"99999\" is not a TCP port"},
	} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), cmdlineEnv+"="+tc.cmdline)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		s := string(out)
		// A bad command line fails before the guest is ready.
		if code != tc.status || ready.MatchString(s) != (tc.status != 2) || !strings.Contains(s, tc.want) ||
			!strings.HasSuffix(s, "ftvm-guest exit status="+strconv.Itoa(tc.status)+"\n") {
			t.Errorf("%q: exit %d, output:\n%s", tc.cmdline, code, s)
		}
	}
}
