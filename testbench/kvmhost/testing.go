package kvmhost

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// testHost is the one nested host shared by all tests of a test binary.
// It is package state by necessity: testing.M and testing.T offer no other
// place to keep it between TestMain and the tests.
var testHost struct { //nolint:gochecknoglobals // per-test-process singleton, see above
	once   sync.Once
	config Config
	host   *Host
	err    error
	where  sync.Once
	direct bool
	why    string
}

// Option adjusts the nested host that TestMain's tests share.
type Option func(*Config)

// WithFiles copies host files or directories into the nested host at the
// same paths.
func WithFiles(paths ...string) Option {
	return func(c *Config) { c.Files = append(c.Files, paths...) }
}

// WithModules loads extra host kernel modules in the nested host.
func WithModules(names ...string) Option {
	return func(c *Config) { c.Modules = append(c.Modules, names...) }
}

// WithMemory sets the nested host's memory in MiB.
func WithMemory(mib int) Option {
	return func(c *Config) { c.MemoryMiB = mib }
}

// TestMain runs a test binary's tests. Inside a nested host it instead
// serves as the host's agent. It boots the shared nested host lazily, on the
// first test that needs it, and powers it off after the last test.
func TestMain(m *testing.M, opts ...Option) int {
	if IsAgent() {
		return AgentMain()
	}
	for _, o := range opts {
		o(&testHost.config)
	}
	code := m.Run()
	if testHost.host != nil {
		if err := testHost.host.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "kvmhost:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// RanElsewhere runs the calling test on a KVM host that executes guest
// ring-0 code at speed, when this process is not on one. It returns false
// when the test body should run here (this machine's KVM is fast, or this
// process already runs inside a nested host), and true when the test was
// run inside the shared nested host, whose outcome (output, failure, skip)
// has then been reported through t.
func RanElsewhere(t *testing.T) bool {
	t.Helper()
	if Inside() {
		return false
	}
	testHost.where.Do(func() { testHost.direct, testHost.why = DirectKVM() })
	if testHost.direct {
		return false
	}
	testHost.once.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			testHost.err = err
			return
		}
		cfg := testHost.config
		cfg.Agent = exe
		if cwd, err := os.Getwd(); err == nil {
			// Tests read testdata relative to their package directory.
			if _, err := os.Stat(filepath.Join(cwd, "testdata")); err == nil {
				cfg.Files = append(cfg.Files, filepath.Join(cwd, "testdata"))
			}
		}
		fmt.Fprintf(os.Stderr, "kvmhost: %s; booting a nested KVM host for this package's tests\n", testHost.why)
		testHost.host, testHost.err = Start(context.Background(), cfg)
	})
	if testHost.err != nil {
		t.Fatalf("%s needs a KVM host: %v", t.Name(), testHost.err)
	}
	timeout := 10 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - time.Minute
	}
	exe, _ := os.Executable()
	cwd, _ := os.Getwd()
	var out bytes.Buffer
	argv := []string{exe, "-test.run", runPattern(t.Name()), "-test.v", "-test.count=1",
		fmt.Sprintf("-test.timeout=%s", timeout)}
	res, err := testHost.host.Run(context.Background(), Command{
		Argv: argv, Dir: cwd, Env: forwardedEnv(), Timeout: timeout + 5*time.Second, Stdout: &out, Stderr: &out,
	})
	t.Logf("ran inside the nested KVM host (kernel %s) in %v:\n%s", testHost.host.Kernel(), res.Duration.Round(time.Millisecond), indent(out.String()))
	switch {
	case err != nil:
		t.Fatalf("%s in the nested KVM host: %v", t.Name(), err)
	case res.TimedOut:
		t.Fatalf("%s timed out in the nested KVM host after %v", t.Name(), res.Duration)
	case res.ExitCode != 0:
		t.Fatalf("%s failed in the nested KVM host (exit status %d)", t.Name(), res.ExitCode)
	case strings.Contains(out.String(), "testing: warning: no tests to run"):
		t.Fatalf("%s: pattern %q matched no test in the nested KVM host", t.Name(), runPattern(t.Name()))
	case strings.Contains(out.String(), "--- SKIP: "+t.Name()+" "):
		t.Skipf("%s was skipped in the nested KVM host", t.Name())
	}
	return true
}

// runPattern matches exactly the named test (and subtest) with -test.run,
// whose pattern is split on slashes, one anchored expression per level.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// forwardedEnv is the part of this process's environment a test run inside
// the nested host inherits: FTVM_* variables, which is how a TestMain tells
// its tests where things are (an image directory passed with WithFiles).
func forwardedEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "FTVM_") && !strings.HasPrefix(kv, roleEnv+"=") && !strings.HasPrefix(kv, whereEnv+"=") {
			env = append(env, kv)
		}
	}
	return env
}
