package kernel

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/hostsetup"
)

func TestFragmentParses(t *testing.T) {
	opts, err := ParseConfig(Fragment())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"64BIT": "y", "MODULES": "n", "VIRTIO_MMIO_CMDLINE_DEVICES": "y", "X86_PM_TIMER": "y", "PVH": "y", "RD_GZIP": "y", "EXT4_FS": "y"}
	got := map[string]string{}
	for _, o := range opts {
		got[o.Name] = o.Value
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("CONFIG_%s: fragment has %q, want %q", k, got[k], v)
		}
	}
	// Every assignment must be explained by a comment right above it (or
	// be part of a commented group).
	lines := strings.Split(string(Fragment()), "\n")
	for _, o := range opts {
		prev := strings.TrimSpace(lines[o.Line-2])
		if !strings.HasPrefix(prev, "#") && !strings.HasPrefix(prev, "CONFIG_") {
			t.Errorf("CONFIG_%s (line %d) has no comment above it", o.Name, o.Line)
		}
	}
}

func TestParseConfigRejects(t *testing.T) {
	for in, want := range map[string]string{
		"CONFIG_A=y\nCONFIG_A=n\n": "already set on line 1",
		"CONFIG_A y\n":             "neither",
	} {
		if _, err := ParseConfig([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%q) = %v, want error containing %q", in, err, want)
		}
	}
}

func TestVerify(t *testing.T) {
	frag := []byte("# why\nCONFIG_A=y\n# why\n# CONFIG_B is not set\n# why\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n")
	good := []byte("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=\"x\"\nCONFIG_E=y\n")
	if err := Verify(frag, good); err != nil {
		t.Fatal(err)
	}
	bad := []byte("CONFIG_B=y\nCONFIG_D=\"y\"\n")
	err := Verify(frag, bad)
	if err == nil {
		t.Fatal("Verify accepted a config lacking CONFIG_A")
	}
	for _, want := range []string{"CONFIG_A=y requested (fragment line 2) but .config has absent (n)", "CONFIG_B=n requested", "CONFIG_D=\"x\""} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestStepCounter(t *testing.T) {
	var log bytes.Buffer
	c := newStepCounter(&log)
	in := "make[1]: Entering directory\n  CC      kernel/fork.o\n  LD      vmlinux.o\nwarning: x\n  AR      lib/lib.a\n"
	for i := 0; i < len(in); i += 7 { // split writes at arbitrary points
		c.Write([]byte(in[i:min(i+7, len(in))]))
	}
	if n, last := c.snapshot(); n != 3 || last != "AR lib/lib.a" {
		t.Fatalf("steps %d last %q", n, last)
	}
	if log.String() != in {
		t.Fatal("log is not a copy of make's output")
	}
}

func TestConfigHash(t *testing.T) {
	a := ConfigHash([]byte("CONFIG_A=y\n"), "6.1.1-1")
	if a == ConfigHash([]byte("CONFIG_A=y\n"), "6.1.1-2") || a == ConfigHash([]byte("CONFIG_A=n\n"), "6.1.1-1") {
		t.Fatal("hash ignores an input")
	}
	if len(a) != 64 {
		t.Fatalf("hash %q", a)
	}
}

// TestBuild builds the real kernel (about 8 minutes the first time on 2
// cores, instant from the cache) and checks what came out.
func TestBuild(t *testing.T) {
	ctx := context.Background()
	t.Log("building the guest kernel; the first build takes about 8 minutes, later ones use the cache")
	start := time.Now()
	res, err := Build(ctx, Options{Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s (cached=%v) in %s: %s", res.ConfigHash[:12], res.Cached, time.Since(start).Round(time.Millisecond), res.Dir)
	f, err := elf.Open(res.Vmlinux)
	if err != nil {
		t.Fatalf("vmlinux is not ELF: %v", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		t.Fatalf("vmlinux is %v %v", f.Class, f.Machine)
	}
	// PVH entry: the kernel advertises XEN_ELFNOTE_PHYS32_ENTRY (18) in a "Xen" note.
	found := false
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte("Xen\x00")) {
			found = true
		}
	}
	if !found {
		t.Error("vmlinux has no Xen ELF note: no PVH entry point")
	}
	bz, err := os.ReadFile(res.BzImage)
	if err != nil {
		t.Fatal(err)
	}
	if len(bz) < 0x206 || string(bz[0x202:0x206]) != "HdrS" {
		t.Fatal("bzImage lacks the HdrS boot protocol signature")
	}
	cfg, err := os.ReadFile(res.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(Fragment(), cfg); err != nil {
		t.Fatal(err)
	}
	// The committed patches are in, and only in the build's own copy.
	if want := patchNames(Patches()); !reflect.DeepEqual(res.Patches, want) {
		t.Errorf("result lists patches %q, want %q", res.Patches, want)
	}
	vmlinux, err := os.ReadFile(res.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(vmlinux, []byte(NoTSCBootLine)) {
		t.Errorf("vmlinux lacks the message of the RDTSC patch, %q", NoTSCBootLine)
	}
	root := filepath.Dir(res.Dir)
	shared, err := os.ReadFile(filepath.Join(root, "src-"+res.SourceVersion, "linux-source-6.1", "arch/x86/kernel/traps.c"))
	if err != nil || bytes.Contains(shared, []byte("fixup_rdtsc_exception")) {
		t.Errorf("the shared source tree was patched in place (or is unreadable: %v)", err)
	}
	if _, err := os.Stat(filepath.Join(root, res.ConfigHash+".src")); !os.IsNotExist(err) {
		t.Errorf("the patched source copy was not removed: %v", err)
	}
	again, err := Build(ctx, Options{})
	if err != nil || !again.Cached || again.Dir != res.Dir {
		t.Fatalf("second build not served from the cache: %+v %v", again, err)
	}
}

func TestWithLogTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "build.log")
	var b strings.Builder
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	os.WriteFile(p, []byte(b.String()), 0o644)
	err := withLogTail(errors.New("make vmlinux: exit status 2"), p)
	s := err.Error()
	if !strings.Contains(s, "line 61\nline 62") || strings.Contains(s, "line 60\n") || !strings.HasSuffix(s, "line 100") || !strings.Contains(s, p) {
		t.Fatalf("log tail wrong:\n%s", s)
	}
}

// sourceAndCache returns the installed linux-source version and the
// kernel cache directory.
func sourceAndCache(t *testing.T) (version, root string) {
	t.Helper()
	version, err := SourceVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if root, err = hostsetup.CacheDir("kernel"); err != nil {
		t.Fatal(err)
	}
	return version, root
}

// TestBuildRejectsDroppedOption runs the real configure step with a fragment
// asking for a symbol kconfig does not know, and for one whose dependency
// is unmet: the build must stop before compiling and name both.
func TestBuildRejectsDroppedOption(t *testing.T) {
	ctx := context.Background()
	frag := append(Fragment(), "\n# test: unknown symbol\nCONFIG_FTVM_NO_SUCH_OPTION=y\n# test: depends on MODULES, which is off\nCONFIG_MODULE_UNLOAD=y\n"...)
	version, root := sourceAndCache(t)
	hash := ConfigHash(frag, version)
	t.Cleanup(func() { os.RemoveAll(filepath.Join(root, hash+".build")) })
	_, err := build(ctx, frag, nil, Options{})
	if err == nil {
		t.Fatal("build accepted a fragment whose options cannot be set")
	}
	for _, want := range []string{"CONFIG_FTVM_NO_SUCH_OPTION=y requested", "CONFIG_MODULE_UNLOAD=y requested", "absent (n)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
	if _, serr := os.Stat(filepath.Join(root, hash)); serr == nil {
		t.Error("a failed build left a cache entry")
	}
	t.Logf("error: %v", err)
}
