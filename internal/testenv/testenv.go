// Package testenv decides what a test does when this machine lacks what it
// needs (root, a tool, a device): skip on a developer's machine, fail where
// the test suite promises to run everything (scripts/test.sh as root, which
// is how CI runs it). A test that silently skips in CI proves nothing.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// strictEnv, when set to 1, turns every Skip of this package into a
// failure. scripts/test.sh sets it when it runs as root.
const strictEnv = "FTVM_TEST_NO_SKIP"

// Skipf skips the test, or fails it under FTVM_TEST_NO_SKIP=1.
func Skipf(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv(strictEnv) == "1" {
		tb.Fatalf("would skip, but "+strictEnv+"=1 (this run must run every test): "+format, args...)
	}
	tb.Skipf(format, args...)
}

// NeedRoot skips (or fails, see Skipf) unless the test runs as root.
func NeedRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Skipf(tb, "needs root for %s", why)
	}
}

// NeedTools skips (or fails) unless every tool is on PATH.
func NeedTools(tb testing.TB, tools ...string) {
	tb.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Skipf(tb, "needs %s on PATH", tool)
		}
	}
}
