package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/storage/arbiter"
)

func TestArbiterShow(t *testing.T) {
	dir := t.TempDir()
	show := func(args ...string) (string, error) {
		cmd := newArbiterCommand()
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(append([]string{"show"}, args...))
		err := cmd.ExecuteContext(context.Background())
		return out.String(), err
	}
	if out, err := show(dir, "demo"); err != nil || !strings.Contains(out, `"demo": generation 0`) {
		t.Fatalf("before a claim: %q %v", out, err)
	}
	d, err := arbiter.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Claim(context.Background(), "demo", "backup on host b", 0); err != nil {
		t.Fatal(err)
	}
	if out, err := show(dir, "demo"); err != nil || !strings.Contains(out, `generation 1 owned by "backup on host b"`) {
		t.Fatalf("after a claim: %q %v", out, err)
	}
	if out, err := show(filepath.Join(dir, "typo"), "demo"); err == nil {
		t.Errorf("a missing directory: %q", out)
	}
}
