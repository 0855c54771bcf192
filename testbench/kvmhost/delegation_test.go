package kvmhost_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRanElsewhereReportsOutcomes builds a test package whose tests pass,
// fail and skip inside the nested host, and checks each outcome shows
// outside: a failure inside must never pass outside.
func TestRanElsewhereReportsOutcomes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "delegation.test")
	build := exec.Command("go", "test", "-c", "-o", bin, "./testdata/delegation")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build delegation test: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-test.v").CombinedOutput()
	text := string(out)
	t.Logf("delegation test output:\n%s", text)
	if err == nil {
		t.Fatal("test binary with a failing test exited 0")
	}
	for _, want := range []string{
		"--- PASS: TestPassesInside",
		"marker: inside with /dev/kvm",
		"--- FAIL: TestFailsInside",
		"marker: failing on purpose inside",
		"failed in the nested KVM host",
		"--- SKIP: TestSkipsInside",
		"--- PASS: TestSubtests/a/b_c",
		"marker: subtest ran inside",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
