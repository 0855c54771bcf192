package images

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/ftvm/ftvm/images/initramfs"
	"github.com/ftvm/ftvm/images/kernel"
)

// ModulePath is the Go module whose source holds the guest /init.
const ModulePath = "github.com/ftvm/ftvm"

// GuestInitPackage is compiled into the initramfs as /init.
const GuestInitPackage = ModulePath + "/images/guestinit"

// DefaultCmdline is the kernel command line recorded in the manifest.
//
//   - console=ttyS0: kernel messages and /init's ready/exit lines go to the
//     16550 UART the VMM models.
//   - reboot=k panic=-1: a panic reboots at once (no 0-second wait loop)
//     through the keyboard controller; with QEMU -no-reboot or our VMM that
//     ends the VM, so a crashed guest never hangs a test.
//   - lpj=1000000: a fixed loops-per-jiffy skips calibrate_delay(), which
//     otherwise counts loop iterations between timer ticks: slow when ring 0
//     is emulated and non-deterministic under replay (DESIGN.md, clock
//     rule). The value only scales udelay(); our devices are virtual and
//     need no real delays, so a modest value (a 250 MHz loop at HZ=250)
//     keeps every udelay short while not being absurdly small.
//   - io_delay=none: Linux otherwise writes port 0x80 after legacy port
//     accesses to slow the bus down; under a VMM each such write is a VM exit
//     (about 6% of a boot's exits) and our device models need no delay.
//   - acpi_pm_good: Linux checks the PM timer by reading it in a loop and
//     rejects it ("PM-Timer had inconsistent results") when two consecutive
//     reads straddle the 24-bit wrap by more than 0xfff ticks. Ours is exact
//     and monotonic by construction, but a VMM stalled on a loaded host (a
//     1.5 s gap was seen under the race detector in the nested test host)
//     can put a wrap between two reads; the guest then falls back to jiffies.
//   - pci=off: the kernel has PCI support only because ACPI needs it (see
//     images/kernel/ftvm.config); our VMM has no PCI host bridge, so the
//     kernel must not probe config space ports 0xcf8/0xcfc.
//   - ftvm.workload=none: /init reports ready and powers off; callers append
//     their own ftvm.workload=, which wins as the later parameter.
const DefaultCmdline = "console=ttyS0 reboot=k panic=-1 lpj=1000000 pci=off io_delay=none acpi_pm_good ftvm.workload=none"

// File names inside an image directory.
const (
	VmlinuxName = "vmlinux"
	BzImageName = "bzImage"
	InitrdName  = "initrd.img"
)

// Options control an image build.
type Options struct {
	// OutDir receives the image; it is created if missing and the image
	// files in it are replaced.
	OutDir string
	// Jobs is make's -j for the kernel build; 0 means one per CPU.
	Jobs int
	// Progress receives human-readable progress; nil discards it.
	Progress io.Writer
	// Logger receives debug logs; nil uses slog.Default().
	Logger *slog.Logger
	// ModuleRoot is the directory of ftvm's go.mod, whose source /init is
	// compiled from; empty means FindModuleRoot.
	ModuleRoot string
}

// Build produces an image directory: the kernel (built or taken from the
// cache, see kernel.Build), an initramfs with the guest /init compiled from
// source, and manifest.json with the sha256 of every file.
func Build(ctx context.Context, opts Options) (Manifest, error) {
	if opts.OutDir == "" {
		return Manifest{}, errors.New("build image: no output directory")
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	k, err := kernel.Build(ctx, kernel.Options{Jobs: opts.Jobs, Progress: opts.Progress, Logger: opts.Logger})
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if k.Cached {
		fmt.Fprintf(opts.Progress, "image: kernel %s from the cache %s\n", k.ConfigHash[:12], k.Dir)
	}

	root := opts.ModuleRoot
	if root == "" {
		if root, err = FindModuleRoot(ctx); err != nil {
			return Manifest{}, fmt.Errorf("build image: %w", err)
		}
	}
	tmp, err := os.MkdirTemp("", "ftvm-image-*")
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	defer os.RemoveAll(tmp)
	initBin := filepath.Join(tmp, "init")
	fmt.Fprintf(opts.Progress, "image: compiling the guest /init (%s) from %s\n", GuestInitPackage, root)
	if err := BuildGuestInit(ctx, root, initBin); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}

	workloads, err := listWorkloads(ctx, initBin)
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	m := Manifest{
		Format: ManifestFormat, Kernel: VmlinuxName, BzImage: BzImageName, Initrd: InitrdName,
		Cmdline: DefaultCmdline, SHA256: map[string]string{},
		KernelConfigHash: k.ConfigHash, LinuxSourceVersion: k.SourceVersion, FTVMVersion: sourceVersion(ctx, root),
		Workloads: workloads,
	}
	out := func(name string) string { return filepath.Join(opts.OutDir, name) }
	if err := installFile(out(VmlinuxName), func(w io.Writer) error { return copyFrom(w, k.Vmlinux) }); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if err := installFile(out(BzImageName), func(w io.Writer) error { return copyFrom(w, k.BzImage) }); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if err := installFile(out(InitrdName), func(w io.Writer) error { return WriteInitrd(w, initBin) }); err != nil {
		return Manifest{}, fmt.Errorf("build image: write initrd: %w", err)
	}
	for _, name := range []string{VmlinuxName, BzImageName, InitrdName} {
		sum, err := fileSHA256(out(name))
		if err != nil {
			return Manifest{}, fmt.Errorf("build image: hash %s: %w", name, err)
		}
		m.SHA256[name] = sum
	}
	data, err := m.Encode()
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: encode manifest: %w", err)
	}
	// The manifest goes last: a directory with a manifest is complete.
	if err := installFile(out(ManifestName), func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	return m, nil
}

// listWorkloads asks the built /init which workloads it has. The binary is
// linux/amd64; on another host it cannot run here and the image lists none.
func listWorkloads(ctx context.Context, initBin string) ([]string, error) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return nil, nil
	}
	cmd := exec.CommandContext(ctx, initBin)
	cmd.Env = append(os.Environ(), "FTVM_GUEST_ROLE=list-workloads")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ask the guest /init for its workloads: %w", err)
	}
	names := strings.Fields(string(out))
	if len(names) == 0 {
		return nil, errors.New("the guest /init lists no workloads")
	}
	return names, nil
}

// WriteInitrd writes the gzip'd newc initramfs: /init (the file at
// initPath), the mount points /init uses, and /dev/console so that the
// kernel can give /init a console before devtmpfs is mounted. The output
// depends only on the bytes of initPath (fixed mtimes, inode order, no
// gzip name or time).
func WriteInitrd(w io.Writer, initPath string) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	cw := initramfs.NewWriter(zw)
	steps := []func() error{
		func() error { return cw.AddDir("dev", 0o755) },
		func() error { return cw.AddCharDevice("dev/console", 0o600, 5, 1) },
		func() error { return cw.AddDir("proc", 0o555) },
		func() error { return cw.AddDir("sys", 0o555) },
		func() error { return cw.AddDir("tmp", 0o1777) },
		func() error { return cw.AddDir("run", 0o755) },
		func() error { return cw.AddHostFile("init", initPath) },
		cw.Close,
		zw.Close,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// BuildGuestInit compiles the guest /init as a static binary: CGO_ENABLED=0
// (the initramfs has no libc or loader), -trimpath (no host paths inside),
// symbols stripped (Go's own tables still give panics their function names).
func BuildGuestInit(ctx context.Context, moduleRoot, outPath string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", outPath, GuestInitPackage)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("compile guest init (go build %s in %s): %w\n%s", GuestInitPackage, moduleRoot, err, out)
	}
	f, err := elf.Open(outPath)
	if err != nil {
		return fmt.Errorf("compile guest init: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("compile guest init: the binary is dynamically linked; it must be static (CGO_ENABLED=0)")
		}
	}
	return nil
}

// FindModuleRoot locates ftvm's source tree, which the image build needs to
// compile /init with the go tool. In order: $FTVM_SOURCE; the module that
// `go env GOMOD` reports for the working directory, if it is ftvm (the
// usual case: ftctl run inside a checkout); the directory this file was
// compiled from (works for binaries built without -trimpath on this machine).
func FindModuleRoot(ctx context.Context) (string, error) {
	var tried []string
	if dir := os.Getenv("FTVM_SOURCE"); dir != "" {
		if isFTVMModule(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("FTVM_SOURCE=%s does not hold the go.mod of %s", dir, ModulePath)
	}
	if out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output(); err == nil {
		gomod := strings.TrimSpace(string(out))
		if gomod != "" && gomod != os.DevNull {
			if dir := filepath.Dir(gomod); isFTVMModule(dir) {
				return dir, nil
			}
			tried = append(tried, gomod)
		}
	} else {
		tried = append(tried, fmt.Sprintf("go env GOMOD (%v)", err))
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dir := filepath.Dir(filepath.Dir(file))
		if isFTVMModule(dir) {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	return "", fmt.Errorf("cannot find the %s source needed to compile the guest /init (tried %s): run from inside a checkout or set FTVM_SOURCE", ModulePath, strings.Join(tried, ", "))
}

func isFTVMModule(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == ModulePath
		}
	}
	return false
}

// Version describes the ftvm build doing the image build: module version,
// VCS revision and whether the tree was modified.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, mod string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				mod = "+modified"
			}
		}
	}
	if rev != "" {
		v += " " + rev + mod
	}
	return v
}

// sourceVersion is Version, completed from git in the source tree when the
// binary carries no VCS stamp (GOFLAGS=-buildvcs=false, go test, go run):
// the /init in the image is compiled from that tree, so its commit is what
// the manifest should name.
func sourceVersion(ctx context.Context, root string) string {
	v := Version()
	if strings.Contains(v, " ") { // already has a revision
		return v
	}
	out, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--always", "--dirty", "--abbrev=40").Output()
	if err != nil {
		return v
	}
	return v + " " + strings.TrimSpace(string(out))
}

// installFile writes a file through a temporary name in the same directory
// and renames it, so a reader never sees a half-written file.
func installFile(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	bw := bufio.NewWriterSize(f, 1<<20)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func copyFrom(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// ReadInitrd gunzips an initrd, for tests and tools that look inside.
func ReadInitrd(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("gunzip %s: %w", path, err)
	}
	var b bytes.Buffer
	if _, err := io.Copy(&b, zr); err != nil {
		return nil, fmt.Errorf("gunzip %s: %w", path, err)
	}
	return b.Bytes(), nil
}
