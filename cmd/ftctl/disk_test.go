package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func runDisk(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newDiskCommand()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true // as the root command does
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestDiskCommands(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FTVM_STORAGE", dir)

	out, _, err := runDisk(t, "create", "data", "--size", "64M")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"created disk data in " + dir, "size:        64MiB (67108864 bytes, 131072 sectors of 512)", "filesystem:  none", "in use:      no"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	if _, _, err := runDisk(t, "create", "data", "--size", "64M"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second create: %v", err)
	}
	for args, want := range map[string]string{
		"create x --size 1GB":             "ambiguous",
		"create x --size 1.5G":            "whole numbers",
		"create x --size 1000":            "multiple of 4096",
		"create x":                        "--size is required",
		"create a/b --size 1M":            "path separator",
		"create x --size 1M --mkfs btrfs": "supported filesystems: ext4",
		"inspect missing":                 "not found",
	} {
		if _, _, err := runDisk(t, strings.Fields(args)...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ftctl disk %s: %v; want an error mentioning %q", args, err, want)
		}
	}

	other := t.TempDir()
	if _, _, err := runDisk(t, "create", "kv", "--size", "32M", "--mkfs", "ext4", "--storage", other); err != nil {
		t.Fatal(err)
	}
	out, _, err = runDisk(t, "inspect", "kv", "--storage", other)
	if err != nil || !strings.Contains(out, "filesystem:  ext4") || !strings.Contains(out, "generation:  0") {
		t.Fatalf("inspect: %v\n%s", err, out)
	}

	out, _, err = runDisk(t, "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "data ") || !strings.Contains(lines[1], "64MiB") {
		t.Fatalf("list:\n%s", out)
	}
	_, errOut, err := runDisk(t, "list", "--storage", t.TempDir())
	if err != nil || !strings.Contains(errOut, "no disks") {
		t.Fatalf("empty list: %v %q", err, errOut)
	}
}
