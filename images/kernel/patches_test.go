package kernel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/ftvm/ftvm/internal/hostsetup"
	"github.com/ftvm/ftvm/internal/testenv"
)

func TestCommittedPatches(t *testing.T) {
	ps := Patches()
	want := map[string][]string{
		"0001-x86-tsc-no-rdtsc-for-entropy-without-tsc.patch": {"arch/x86/include/asm/timex.h", "arch/x86/include/asm/tsc.h"},
		"0002-x86-traps-emulate-user-rdtsc-without-tsc.patch": {"arch/x86/include/asm/tsc.h", "arch/x86/kernel/cpu/common.c", "arch/x86/kernel/process.c", "arch/x86/kernel/traps.c"},
		"0003-clocksource-acpi-pm-accept-late-wrap.patch":     {"drivers/clocksource/acpi_pm.c"},
	}
	if len(ps) != len(want) {
		t.Fatalf("%d patches: %v", len(ps), patchNames(ps))
	}
	for _, p := range ps {
		files, err := PatchedFiles(p.Data)
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		if !reflect.DeepEqual(files, want[p.Name]) {
			t.Errorf("%s changes %q, want %q", p.Name, files, want[p.Name])
		}
	}
	// The boot line tests look for must be the one the patch prints.
	if !strings.Contains(string(ps[1].Data), "\n+\t\t\tpr_info(\""+NoTSCBootLine+"\\n\");\n") {
		t.Errorf("%s does not print %q", ps[1].Name, NoTSCBootLine)
	}
}

func TestPatchedFiles(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
		err      string
	}{
		{"git format-patch with description", "From: x\nSubject: y\n\nwhy\n---\n--- a/b/c.h\t2024-01-01\n+++ b/b/c.h\t2024-01-02\n@@ -1 +1 @@\n-x\n+y\n--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-x\n+y\n", []string{"a.c", "b/c.h"}, ""},
		{"new and deleted files", "--- /dev/null\n+++ b/new.c\n@@ -0,0 +1 @@\n+x\n--- a/old.c\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n", []string{"new.c", "old.c"}, ""},
		{"a file twice", "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n--- a/x\n+++ b/x\n@@ -3 +3 @@\n-c\n+d\n", []string{"x"}, ""},
		{"no headers", "just text\n+++ b/x\n", nil, "not a unified diff"},
		{"no prefix", "--- x.c\n+++ x.c\n", nil, "want an a/ or b/ prefix"},
		{"escapes the tree", "--- a/../x\n+++ b/../x\n", nil, "not a clean path"},
		{"absolute", "--- a//etc/x\n+++ b//etc/x\n", nil, "not a clean path"},
	} {
		got, err := PatchedFiles([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want error containing %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %q %v, want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestReadPatchesOrderAndNames(t *testing.T) {
	diff := []byte("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
	ps, err := readPatches(fstest.MapFS{
		"p/0002-b.patch": {Data: diff}, "p/0001-a.patch": {Data: diff}, "p/README": {Data: []byte("not a patch")},
	}, "p")
	if err != nil || len(ps) != 2 || ps[0].Name != "0001-a.patch" || ps[1].Name != "0002-b.patch" {
		t.Fatalf("%v %v", patchNames(ps), err)
	}
	for name, fsys := range map[string]fstest.MapFS{
		"must look like NNNN":       {"p/1-a.patch": {Data: diff}},
		"sequence numbers must":     {"p/0001-a.patch": {Data: diff}, "p/0001-b.patch": {Data: diff}},
		"0001-e.patch: no ---/+++ ": {"p/0001-e.patch": {Data: []byte("nothing\n")}},
	} {
		if _, err := readPatches(fsys, "p"); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%v: %v, want error containing %q", fsys, err, name)
		}
	}
}

func TestConfigHashPatches(t *testing.T) {
	frag, v := []byte("CONFIG_A=y\n"), "6.1.1-1"
	old := sha256.Sum256(append(append([]byte{}, frag...), v...))
	if ConfigHash(frag, v) != hex.EncodeToString(old[:]) {
		t.Fatal("without patches the key must stay sha256(fragment || version), the key of existing cache entries")
	}
	a := Patch{Name: "0001-a.patch", Data: []byte("--- a/x\n+++ b/x\n")}
	b := Patch{Name: "0002-b.patch", Data: []byte("--- a/y\n+++ b/y\n")}
	keys := map[string]string{}
	for what, k := range map[string]string{
		"none":            ConfigHash(frag, v),
		"a":               ConfigHash(frag, v, a),
		"a b":             ConfigHash(frag, v, a, b),
		"b a":             ConfigHash(frag, v, b, a),
		"a changed":       ConfigHash(frag, v, Patch{Name: a.Name, Data: append([]byte("why\n"), a.Data...)}),
		"a renamed":       ConfigHash(frag, v, Patch{Name: "0003-a.patch", Data: a.Data}),
		"name/data split": ConfigHash(frag, v, Patch{Name: a.Name + "-", Data: a.Data[1:]}),
		"other version":   ConfigHash(frag, "6.1.1-2", a),
		"other fragment":  ConfigHash([]byte("CONFIG_A=n\n"), v, a),
	} {
		if prev, dup := keys[k]; dup {
			t.Errorf("%q and %q have the same key", what, prev)
		}
		keys[k] = what
	}
	// Pinned: the key names cache entries on every machine; a change to how
	// it is computed must be a decision (it rebuilds every kernel), not an
	// accident. Recompute with the scheme in ConfigHash's doc comment.
	if got, want := ConfigHash(frag, v, a, b), "2d896768efb4cef1acfeb1dcf3e2028eb732b8ca4b03bceae13ba3c8f175bea5"; got != want {
		t.Fatalf("ConfigHash(fragment, version, a, b) = %s, pinned %s", got, want)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skipf(t, "%s not installed", tool)
		}
	}
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPatchedSourceKeepsPristine applies patches to a link farm of a small
// tree: the farm gets the changes, the shared tree keeps every byte, files
// no patch touches stay shared, and a patch that does not apply fails with
// its name.
func TestPatchedSourceKeepsPristine(t *testing.T) {
	needTools(t, "cp", "patch")
	tmp := t.TempDir()
	pristine, farm := filepath.Join(tmp, "src"), filepath.Join(tmp, "cache", "key.src")
	orig := map[string]string{
		"Makefile":         "all:\n",
		"arch/x86/tsc.h":   "one\ntwo\nthree\n",
		"kernel/traps.c":   "a\nb\nc\n",
		"kernel/unused.c":  "x\n",
		"kernel/doomed.c":  "bye\n",
		"include/linux.h":  "#pragma once\n",
		"scripts/setup.sh": "#!/bin/sh\n",
	}
	writeTree(t, pristine, orig)
	ps := []Patch{
		{Name: "0001-first.patch", Data: []byte("Subject: first\n\n---\n" +
			"--- a/arch/x86/tsc.h\n+++ b/arch/x86/tsc.h\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n" +
			"--- /dev/null\n+++ b/kernel/new.c\n@@ -0,0 +1 @@\n+new\n" +
			"--- a/kernel/doomed.c\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n")},
		// The second patch applies on top of the first.
		{Name: "0002-second.patch", Data: []byte("--- a/arch/x86/tsc.h\n+++ b/arch/x86/tsc.h\n@@ -1,3 +1,3 @@\n one\n TWO\n-three\n+THREE\n" +
			"--- a/kernel/traps.c\n+++ b/kernel/traps.c\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n")},
	}
	var log strings.Builder
	if err := patchedSource(context.Background(), pristine, farm, ps, &log); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	for name, data := range orig {
		got, err := os.ReadFile(filepath.Join(pristine, name))
		if err != nil || string(got) != data {
			t.Errorf("pristine %s changed: %q %v", name, got, err)
		}
	}
	for name, data := range map[string]string{"arch/x86/tsc.h": "one\nTWO\nTHREE\n", "kernel/traps.c": "a\nB\nc\n", "kernel/new.c": "new\n", "Makefile": "all:\n"} {
		if got, err := os.ReadFile(filepath.Join(farm, name)); err != nil || string(got) != data {
			t.Errorf("farm %s: %q %v, want %q", name, got, err, data)
		}
	}
	if _, err := os.Stat(filepath.Join(farm, "kernel/doomed.c")); !os.IsNotExist(err) {
		t.Errorf("farm kernel/doomed.c not deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pristine, "kernel/new.c")); !os.IsNotExist(err) {
		t.Errorf("new file appeared in the pristine tree: %v", err)
	}
	same := func(name string) bool {
		a, err1 := os.Stat(filepath.Join(pristine, name))
		b, err2 := os.Stat(filepath.Join(farm, name))
		return err1 == nil && err2 == nil && os.SameFile(a, b)
	}
	if !same("kernel/unused.c") || !same("Makefile") {
		t.Error("untouched files are not hard links to the shared tree")
	}
	if same("arch/x86/tsc.h") || same("kernel/traps.c") {
		t.Error("a patched file is still linked to the shared tree")
	}
	if strings.Contains(log.String(), ".ftvm-unshare") {
		t.Errorf("patch saw a temporary file:\n%s", log.String())
	}

	// A patch whose context does not match: named in the error, pristine untouched.
	bad := Patch{Name: "0003-stale.patch", Data: []byte("--- a/kernel/unused.c\n+++ b/kernel/unused.c\n@@ -1 +1 @@\n-not what is there\n+y\n")}
	err := patchedSource(context.Background(), pristine, farm, append(ps, bad), &log)
	if err == nil || !strings.Contains(err.Error(), "kernel patch 0003-stale.patch does not apply") || !strings.Contains(err.Error(), "FAILED") {
		t.Fatalf("stale patch: %v", err)
	}
	t.Logf("stale patch reported as: %v", err)
	if got, _ := os.ReadFile(filepath.Join(pristine, "kernel/unused.c")); string(got) != "x\n" {
		t.Errorf("failed patch changed the pristine tree: %q", got)
	}
	// Applying the same patch twice is an error too, not a silent skip.
	err = patchedSource(context.Background(), pristine, farm, []Patch{ps[0], ps[0]}, &log)
	if err == nil || !strings.Contains(err.Error(), "kernel patch 0001-first.patch does not apply") {
		t.Fatalf("patch applied twice: %v", err)
	}
}

// TestCommittedPatchesApply applies the committed patches, in order and
// without fuzz, to copies of the files they touch from linux-source: the
// tree a kernel build unpacked into the cache, or else just those files
// taken from the source tarball. It never skips where linux-source is
// installed (scripts/setup.sh installs it).
func TestCommittedPatchesApply(t *testing.T) {
	needTools(t, "patch", "tar")
	version, err := SourceVersion(context.Background())
	if err != nil {
		testenv.Skipf(t, "%v", err)
	}
	src := filepath.Join(t.TempDir(), "linux-source-6.1")
	if root, err := hostsetup.CacheDir("kernel"); err == nil {
		if unpacked := filepath.Join(root, "src-"+version, "linux-source-6.1"); fileExists(filepath.Join(unpacked, "Makefile")) {
			src = unpacked
		}
	}
	if !fileExists(filepath.Join(src, "Makefile")) {
		members := []string{"linux-source-6.1/Makefile"}
		for _, p := range Patches() {
			files, _ := PatchedFiles(p.Data)
			for _, f := range files {
				if m := "linux-source-6.1/" + f; !slices.Contains(members, m) {
					members = append(members, m)
				}
			}
		}
		t.Logf("linux-source is not unpacked in the kernel cache; extracting %d files from %s", len(members), sourceTarball)
		args := append([]string{"-C", filepath.Dir(src), "-xJf", sourceTarball}, members...)
		if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
			t.Fatalf("extract the patched files from %s: %v\n%s", sourceTarball, err, out)
		}
	}
	dir := t.TempDir()
	var log strings.Builder
	for _, p := range Patches() {
		files, _ := PatchedFiles(p.Data)
		for _, f := range files {
			dst := filepath.Join(dir, f)
			if _, err := os.Stat(dst); err == nil {
				continue // changed by an earlier patch
			}
			data, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				t.Fatal(err)
			}
			writeTree(t, dir, map[string]string{f: string(data)})
		}
		if err := applyPatch(context.Background(), dir, p, &log); err != nil {
			t.Fatal(err)
		}
	}
	traps, err := os.ReadFile(filepath.Join(dir, "arch/x86/kernel/traps.c"))
	if err != nil || !strings.Contains(string(traps), "fixup_rdtsc_exception(regs, error_code)") {
		t.Fatalf("traps.c not patched: %v", err)
	}
	t.Logf("%s", log.String())
}

// TestBuildRejectsStalePatch runs the real build with the committed
// patches and one whose context is not in linux-source: the build must
// stop before configuring, name the patch, and leave neither a cache entry
// nor its patched source copy behind.
func TestBuildRejectsStalePatch(t *testing.T) {
	ctx := context.Background()
	stale := Patch{Name: "0099-stale.patch", Data: []byte("Subject: a patch for another kernel\n\n---\n" +
		"--- a/arch/x86/kernel/traps.c\n+++ b/arch/x86/kernel/traps.c\n@@ -1,3 +1,3 @@\n this line\n-is not\n+in traps.c\n at all\n")}
	ps := append(Patches(), stale)
	version, root := sourceAndCache(t)
	hash := ConfigHash(Fragment(), version, ps...)
	_, err := build(ctx, Fragment(), ps, Options{})
	if err == nil {
		t.Fatal("build accepted a patch that does not apply")
	}
	for _, want := range []string{"build kernel " + hash[:12], "kernel patch 0099-stale.patch does not apply", "FAILED"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
	for _, p := range []string{hash, hash + ".src", hash + ".build"} {
		if _, serr := os.Stat(filepath.Join(root, p)); !os.IsNotExist(serr) {
			t.Errorf("a failed build left %s behind (%v)", p, serr)
		}
	}
	t.Logf("error: %v", err)
}
