package vm_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ftvm/ftvm/internal/hostsetup"
)

// TestGuestBinariesMatchSources reassembles the tiny test guests and checks
// the committed binaries are what their sources say.
func TestGuestBinariesMatchSources(t *testing.T) {
	if err := hostsetup.Ensure(context.Background(), os.Stderr,
		hostsetup.Requirement{Path: "as", Package: "binutils"},
		hostsetup.Requirement{Path: "ld", Package: "binutils"}); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "testdata/guests/build.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("assemble guests: %v\n%s", err, b)
	}
	srcs, _ := filepath.Glob("testdata/guests/*.S")
	if len(srcs) == 0 {
		t.Fatal("no guest sources")
	}
	for _, src := range srcs {
		name := filepath.Base(src[:len(src)-2]) + ".bin"
		want, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("testdata/guests", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("testdata/guests/%s is stale: run testdata/guests/build.sh", name)
		}
	}
}
