package kvmhost

import (
	"strings"
	"testing"
)

// TestInnerVerdict: an inner run passes only with the test's own PASS line
// (or a benchmark's result line); exiting 0 without it is a failure.
func TestInnerVerdict(t *testing.T) {
	const name = "TestPair"
	for _, tc := range []struct {
		name, out string
		bench     bool
		res       Result
		skipped   bool
		err       string
	}{
		{"passed", "=== RUN   TestPair\n--- PASS: TestPair (12.00s)\nPASS\n", false, Result{}, false, ""},
		{"exit 0 and no PASS line", "PASS\n", false, Result{}, false, "without a \"--- PASS: TestPair\" line"},
		{"a TestMain that returned early", "", false, Result{}, false, "without a \"--- PASS: TestPair\" line"},
		{"another test passed", "--- PASS: TestPairs (1.00s)\n", false, Result{}, false, "without a \"--- PASS: TestPair\" line"},
		{"no tests to run", "testing: warning: no tests to run\nPASS\n", false, Result{}, false, "matched no test"},
		{"failed", "--- FAIL: TestPair (1.00s)\n", false, Result{ExitCode: 1}, false, "exit status 1"},
		{"timed out", "", false, Result{TimedOut: true}, false, "timed out"},
		{"skipped", "--- SKIP: TestPair (0.00s)\n", false, Result{}, true, ""},
		{"benchmark ran", "BenchmarkX-1   \t1\t123 ns/op\t4.5 ready-ms\nPASS\n", true, Result{}, false, ""},
		{"benchmark did not run", "PASS\n", true, Result{}, false, "without the benchmark's result line"},
	} {
		n := name
		if tc.bench {
			n = "BenchmarkX"
		}
		skipped, err := innerVerdict(n, tc.bench, tc.out, tc.res)
		if skipped != tc.skipped || (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: skipped %v, err %v; want %v, %q", tc.name, skipped, err, tc.skipped, tc.err)
		}
	}
}
