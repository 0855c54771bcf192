package kvmhost

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testenv"
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
	// benchOut keeps each benchmark's inner output: the framework calls a
	// benchmark function again with a larger b.N, which must not rerun it.
	benchMu  sync.Mutex
	benchOut map[string]string
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

// RanElsewhere runs the calling test or benchmark on a KVM host that
// executes guest ring-0 code at speed, when this process is not on one. It
// returns false when the body should run here (this machine's KVM is fast,
// or this process already runs inside a nested host), and true when it ran
// inside the shared nested host, whose outcome (output, failure, skip, and a
// benchmark's metrics) has then been reported through tb.
func RanElsewhere(tb testing.TB) bool {
	tb.Helper()
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
		tb.Fatalf("%s needs a KVM host: %v", tb.Name(), testHost.err)
	}
	timeout := 10 * time.Minute
	if t, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := t.Deadline(); ok {
			timeout = time.Until(d) - time.Minute
		}
	}
	b, isBench := tb.(*testing.B)
	if isBench {
		testHost.benchMu.Lock()
		out, done := testHost.benchOut[tb.Name()]
		testHost.benchMu.Unlock()
		if done {
			reportBenchmark(b, out)
			return true
		}
	}
	exe, _ := os.Executable()
	cwd, _ := os.Getwd()
	argv := []string{exe, "-test.v", "-test.count=1", fmt.Sprintf("-test.timeout=%s", timeout)}
	if isBench {
		argv = append(argv, "-test.run", "^$", "-test.bench", runPattern(tb.Name()), "-test.benchmem")
		if f := flag.Lookup("test.benchtime"); f != nil {
			argv = append(argv, "-test.benchtime", f.Value.String())
		}
	} else {
		argv = append(argv, "-test.run", runPattern(tb.Name()))
	}
	var out bytes.Buffer
	res, err := testHost.host.Run(context.Background(), Command{
		Argv: argv, Dir: cwd, Env: forwardedEnv(), Timeout: timeout + 5*time.Second, Stdout: &out, Stderr: &out,
	})
	if isBench {
		// go test keeps only the first 10 lines a benchmark logs: the inner
		// run's output goes to stdout whole, where a report can read it.
		fmt.Printf("=== %s: output of its run inside the nested KVM host\n%s\n=== end of %s's nested output\n", tb.Name(), indent(out.String()), tb.Name())
		tb.Logf("ran inside the nested KVM host (kernel %s) in %v; its output is above", testHost.host.Kernel(), res.Duration.Round(time.Millisecond))
	} else {
		tb.Logf("ran inside the nested KVM host (kernel %s) in %v:\n%s", testHost.host.Kernel(), res.Duration.Round(time.Millisecond), indent(out.String()))
	}
	if err != nil {
		tb.Fatalf("%s in the nested KVM host: %v", tb.Name(), err)
	}
	skipped, verr := innerVerdict(tb.Name(), isBench, out.String(), res)
	if verr != nil {
		tb.Fatal(verr)
	}
	if skipped {
		testenv.Skipf(tb, "%s was skipped in the nested KVM host", tb.Name())
	}
	if isBench {
		testHost.benchMu.Lock()
		if testHost.benchOut == nil {
			testHost.benchOut = map[string]string{}
		}
		testHost.benchOut[tb.Name()] = out.String()
		testHost.benchMu.Unlock()
		reportBenchmark(b, out.String())
	}
	return true
}

// innerVerdict reads how the inner run of test (or benchmark) name went. It
// passes only with evidence: exit status 0 and the test's own "--- PASS"
// line (a benchmark's result line); an inner binary that exits 0 without
// running the test (a TestMain that returns early, a pattern that matches
// nothing) fails.
func innerVerdict(name string, isBench bool, out string, res Result) (skipped bool, err error) {
	switch {
	case res.TimedOut:
		return false, fmt.Errorf("%s timed out in the nested KVM host after %v", name, res.Duration)
	case res.ExitCode != 0:
		return false, fmt.Errorf("%s failed in the nested KVM host (exit status %d)", name, res.ExitCode)
	case strings.Contains(out, "testing: warning: no tests to run"):
		return false, fmt.Errorf("%s: pattern %q matched no test in the nested KVM host", name, runPattern(name))
	case strings.Contains(out, "--- SKIP: "+name+" "):
		return true, nil
	case isBench:
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 3 && (f[0] == name || strings.HasPrefix(f[0], name+"-")) {
				return false, nil
			}
		}
		return false, fmt.Errorf("%s: the nested KVM host's run exited 0 without the benchmark's result line", name)
	case !strings.Contains(out, "--- PASS: "+name+" ("):
		return false, fmt.Errorf("%s: the nested KVM host's run exited 0 without a \"--- PASS: %s\" line: the test did not run there", name, name)
	}
	return false, nil
}

// reportBenchmark copies the metrics of the inner run's result line
// ("BenchmarkX-1  5  123 ns/op  4.5 ready-ms ...") to the outer benchmark, so
// `go test -bench` prints the nested host's numbers as its own.
func reportBenchmark(b *testing.B, out string) {
	name := b.Name()
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 4 || (fields[0] != name && !strings.HasPrefix(fields[0], name+"-")) {
			continue
		}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			b.ReportMetric(v, fields[i+1])
		}
	}
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
