package kernel

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/internal/hostsetup"
	"golang.org/x/sys/unix"
)

// SourcePackage is the Debian package whose tarball the kernel is built from.
const SourcePackage = "linux-source-6.1"

// sourceTarball is where SourcePackage installs the source.
const sourceTarball = "/usr/src/linux-source-6.1.tar.xz"

// Options control a kernel build.
type Options struct {
	// Jobs is make's -j; 0 means one per CPU.
	Jobs int
	// Progress receives human-readable progress lines (apt output, build
	// progress every few seconds). Nil discards them.
	Progress io.Writer
	// ProgressInterval is how often a progress line is printed while make
	// runs; 0 means 10 seconds.
	ProgressInterval time.Duration
	// Logger receives structured debug logs; nil uses slog.Default().
	Logger *slog.Logger
}

// Result describes a built (or cached) kernel.
type Result struct {
	Dir           string // cache directory holding the files below
	Vmlinux       string // ELF image with the PVH entry note
	BzImage       string // bzImage for the Linux boot protocol
	Config        string // the final .config
	BuildLog      string // make's full output
	ConfigHash    string // sha256 of fragment, source version and patches: the cache key
	SourceVersion string // Debian version of linux-source-6.1
	// Patches names the committed patches applied to the source, in order.
	Patches []string
	Cached  bool // true when nothing had to be built
}

// Requirements lists the host tools the build needs and their Debian packages.
func Requirements() []hostsetup.Requirement {
	return []hostsetup.Requirement{
		{Path: sourceTarball, Package: SourcePackage},
		{Path: "make", Package: "build-essential"},
		{Path: "gcc", Package: "build-essential"},
		{Path: "bc", Package: "bc"},
		{Path: "flex", Package: "flex"},
		{Path: "bison", Package: "bison"},
		{Path: "/usr/include/libelf.h", Package: "libelf-dev"},
		{Path: "cpio", Package: "cpio"},
		{Path: "xz", Package: "xz-utils"},
		{Path: "patch", Package: "patch"},
	}
}

// SourceVersion returns the installed version of linux-source-6.1.
func SourceVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", SourcePackage).Output()
	if err != nil {
		return "", fmt.Errorf("query version of %s (is it installed?): %w", SourcePackage, err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("query version of %s: not installed", SourcePackage)
	}
	return v, nil
}

// ConfigHash is the cache key: sha256 of the fragment bytes followed by the
// source package version and then, if there are any, the patches in the
// order they are applied, each as its name and its length-prefixed bytes
// (descriptions included: a patch file that changes at all rebuilds).
// Without patches the key is what it was before patches existed, so such
// builds keep their cache entries.
func ConfigHash(fragment []byte, sourceVersion string, patches ...Patch) string {
	h := sha256.New()
	h.Write(fragment)
	h.Write([]byte(sourceVersion))
	if len(patches) > 0 {
		fmt.Fprintf(h, "\x00ftvm kernel patches v1\x00%d\x00", len(patches))
		for _, p := range patches {
			fmt.Fprintf(h, "%s\x00%d\x00", p.Name, len(p.Data))
			h.Write(p.Data)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func resultIn(dir, hash, version string, patches []Patch, cached bool) Result {
	return Result{
		Dir: dir, Vmlinux: filepath.Join(dir, "vmlinux"), BzImage: filepath.Join(dir, "bzImage"),
		Config: filepath.Join(dir, "config"), BuildLog: filepath.Join(dir, "build.log"),
		ConfigHash: hash, SourceVersion: version, Patches: patchNames(patches), Cached: cached,
	}
}

func complete(r Result) bool {
	for _, p := range []string{r.Vmlinux, r.BzImage, r.Config} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// Build returns the kernel for the committed fragment and patches
// (patches/*.patch, applied in name order), building it first if the
// cache (hostsetup.CacheDir("kernel/<hash>")) does not have it yet.
// The first build takes about 8 minutes on 2 cores; later calls return at
// once. Concurrent callers (two test binaries, a CLI) wait for each other on
// a lock file, and a build is staged in a temporary directory and renamed
// into place, so an interrupted build never leaves a half-filled cache entry.
func Build(ctx context.Context, opts Options) (Result, error) {
	return build(ctx, fragment, Patches(), opts)
}

func build(ctx context.Context, frag []byte, patches []Patch, opts Options) (Result, error) {
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = 10 * time.Second
	}
	if _, err := ParseConfig(frag); err != nil {
		return Result{}, fmt.Errorf("build kernel: config fragment: %w", err)
	}
	if err := checkPatches(patches); err != nil {
		return Result{}, fmt.Errorf("build kernel: %w", err)
	}
	if err := hostsetup.Ensure(ctx, opts.Progress, Requirements()...); err != nil {
		return Result{}, fmt.Errorf("build kernel: install build dependencies: %w", err)
	}
	version, err := SourceVersion(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("build kernel: %w", err)
	}
	hash := ConfigHash(frag, version, patches...)
	root, err := hostsetup.CacheDir("kernel")
	if err != nil {
		return Result{}, fmt.Errorf("build kernel: %w", err)
	}
	res := resultIn(filepath.Join(root, hash), hash, version, patches, true)
	if complete(res) {
		return res, nil
	}

	unlock, err := lockFile(ctx, filepath.Join(root, ".lock"), opts.Progress)
	if err != nil {
		return Result{}, fmt.Errorf("build kernel %s: %w", hash[:12], err)
	}
	defer unlock()
	if complete(res) { // another process built it while we waited
		return res, nil
	}
	res.Cached = false
	// Staging directories and patched source trees of builds that were
	// killed; only lock holders create them.
	tmps, _ := filepath.Glob(filepath.Join(root, "*.tmp"))
	farms, _ := filepath.Glob(filepath.Join(root, "*.src"))
	if stale := append(tmps, farms...); len(stale) > 0 {
		for _, d := range stale {
			opts.Logger.Debug("remove stale kernel staging directory", "dir", d)
			os.RemoveAll(d)
		}
	}
	src, err := unpackSource(ctx, root, version, opts)
	if err != nil {
		return Result{}, fmt.Errorf("build kernel %s: %w", hash[:12], err)
	}
	if len(patches) > 0 {
		// The shared tree stays pristine; see patchedSource. The farm is
		// named by the key, not randomly, so that every build of one key
		// compiles from the same source path.
		farm := filepath.Join(root, hash+".src")
		defer func() {
			if err := os.RemoveAll(farm); err != nil {
				opts.Logger.Warn("remove patched kernel source", "dir", farm, "err", err)
			}
		}()
		fmt.Fprintf(opts.Progress, "kernel: applying %d patch(es) to a linked copy of the source in %s\n", len(patches), farm)
		if err := patchedSource(ctx, src, farm, patches, opts.Progress); err != nil {
			return Result{}, fmt.Errorf("build kernel %s (linux-source %s): %w", hash[:12], version, err)
		}
		src = farm
	}
	if err := compile(ctx, src, root, frag, res, opts); err != nil {
		return Result{}, fmt.Errorf("build kernel %s (linux-source %s): %w", hash[:12], version, err)
	}
	return res, nil
}

// lockFile takes an exclusive flock, polling so that ctx can cancel the wait.
func lockFile(ctx context.Context, path string, progress io.Writer) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	announced := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !announced {
			fmt.Fprintf(progress, "kernel: another build holds %s, waiting for it\n", path)
			announced = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// unpackSource unpacks the source tarball once per source version; the
// tree is only read by builds (they use make O=dir, and patches go to a
// linked copy, see patchedSource), so configs and patch sets share it.
func unpackSource(ctx context.Context, root, version string, opts Options) (string, error) {
	dir := filepath.Join(root, "src-"+version)
	src := filepath.Join(dir, "linux-source-6.1")
	if _, err := os.Stat(filepath.Join(src, "Makefile")); err == nil {
		return src, nil
	}
	fmt.Fprintf(opts.Progress, "kernel: unpacking %s into %s (about a minute)\n", sourceTarball, dir)
	tmp, err := os.MkdirTemp(root, "src-*.tmp")
	if err != nil {
		return "", fmt.Errorf("unpack source: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it private
		return "", fmt.Errorf("unpack source: %w", err)
	}
	cmd := exec.CommandContext(ctx, "tar", "-C", tmp, "-xJf", sourceTarball)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("unpack %s: %w\n%s", sourceTarball, err, out)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("unpack source: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("unpack source: %w", err)
	}
	return src, nil
}

// compile configures and builds in root/<hash>.build, then moves the
// results into res.Dir.
func compile(ctx context.Context, src, root string, frag []byte, res Result, opts Options) error {
	work := res.Dir + ".build"
	if err := os.RemoveAll(work); err != nil { // left over from an interrupted build
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(work, "build.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()

	start := time.Now()
	makeArgs := func(targets ...string) []string {
		return append([]string{"-C", src, "O=" + work, "ARCH=x86_64"}, targets...)
	}
	fmt.Fprintf(opts.Progress, "kernel: configuring (tinyconfig + %d options of the ftvm fragment)\n", mustCount(frag))
	if err := runMake(ctx, logFile, nil, makeArgs("tinyconfig")); err != nil {
		return withLogTail(err, logPath)
	}
	cfgPath := filepath.Join(work, ".config")
	if err := appendFile(cfgPath, append([]byte("\n# ftvm fragment\n"), frag...)); err != nil {
		return err
	}
	if err := runMake(ctx, logFile, nil, makeArgs("olddefconfig")); err != nil {
		return withLogTail(err, logPath)
	}
	final, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	if err := Verify(frag, final); err != nil {
		return fmt.Errorf("%w\n(final config: %s)", err, cfgPath)
	}

	expected := readSteps(filepath.Join(root, "steps"))
	fmt.Fprintf(opts.Progress, "kernel: compiling vmlinux and bzImage with make -j%d (about 8 minutes on 2 cores the first time; log: %s)\n", opts.Jobs, logPath)
	prog := newStepCounter(logFile)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(opts.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				n, last := prog.snapshot()
				pct := ""
				if expected > 0 {
					pct = fmt.Sprintf(" ~%d%%", min(99, n*100/expected))
				}
				fmt.Fprintf(opts.Progress, "kernel: %s elapsed, %d build steps%s, last: %s\n",
					time.Since(start).Round(time.Second), n, pct, last)
			}
		}
	}()
	err = runMake(ctx, prog, nil, makeArgs("-j"+strconv.Itoa(opts.Jobs), "vmlinux", "bzImage"))
	close(stop)
	wg.Wait()
	if err != nil {
		return withLogTail(err, logPath)
	}
	steps, _ := prog.snapshot()
	opts.Logger.Debug("kernel build finished", "steps", steps, "elapsed", time.Since(start))

	stage, err := os.MkdirTemp(root, res.ConfigHash[:12]+"-*.tmp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil { // MkdirTemp makes it private
		return err
	}
	for from, to := range map[string]string{
		filepath.Join(work, "vmlinux"):               "vmlinux",
		filepath.Join(work, "arch/x86/boot/bzImage"): "bzImage",
		cfgPath: "config",
		logPath: "build.log",
	} {
		if err := copyFile(from, filepath.Join(stage, to)); err != nil {
			return fmt.Errorf("collect build results: %w", err)
		}
	}
	if err := os.Rename(stage, res.Dir); err != nil {
		return fmt.Errorf("move build results into the cache: %w", err)
	}
	_ = os.WriteFile(filepath.Join(root, "steps"), []byte(strconv.Itoa(steps)), 0o644)
	fmt.Fprintf(opts.Progress, "kernel: built in %s, cached in %s\n", time.Since(start).Round(time.Second), res.Dir)
	// The object tree is large and a config change rebuilds from scratch anyway.
	if err := os.RemoveAll(work); err != nil {
		opts.Logger.Warn("remove kernel build tree", "dir", work, "err", err)
	}
	return nil
}

func mustCount(frag []byte) int {
	opts, _ := ParseConfig(frag)
	return len(opts)
}

// runMake runs make with its output to out. The whole process group is
// killed on cancellation so no compiler keeps running after we return.
func runMake(ctx context.Context, out io.Writer, env []string, args []string) error {
	cmd := exec.CommandContext(ctx, "make", args...)
	cmd.Env = append(os.Environ(),
		// Reproducible version strings: same fragment and source, same bytes.
		"KBUILD_BUILD_TIMESTAMP=1970-01-01", "KBUILD_BUILD_USER=ftvm", "KBUILD_BUILD_HOST=ftvm",
		"LC_ALL=C")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("make %s: %w", strings.Join(args[3:], " "), ctx.Err())
		}
		return fmt.Errorf("make %s: %w", strings.Join(args[3:], " "), err)
	}
	return nil
}

// withLogTail adds the last 40 lines of the make log to err.
func withLogTail(err error, logPath string) error {
	data, rerr := os.ReadFile(logPath)
	if rerr != nil {
		return fmt.Errorf("%w (log %s unreadable: %v)", err, logPath, rerr)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return fmt.Errorf("%w\nlast lines of %s:\n%s", err, logPath, strings.Join(lines, "\n"))
}

// stepCounter passes make's output through to the log and counts kbuild's
// quiet-mode step lines ("  CC      kernel/fork.o").
type stepCounter struct {
	out     io.Writer
	mu      sync.Mutex
	partial []byte
	steps   int
	last    string
}

func newStepCounter(out io.Writer) *stepCounter { return &stepCounter{out: out} }

func (s *stepCounter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, p...)
	for {
		i := strings.IndexByte(string(s.partial), '\n')
		if i < 0 {
			break
		}
		line := string(s.partial[:i])
		s.partial = s.partial[i+1:]
		if isStep(line) {
			s.steps++
			s.last = strings.Join(strings.Fields(line), " ")
		}
	}
	if len(s.partial) > 4096 { // a pathological line without newline
		s.partial = s.partial[:0]
	}
	return s.out.Write(p)
}

func (s *stepCounter) snapshot() (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.steps, s.last
}

// isStep recognizes kbuild's "  TAG     target" lines, e.g. CC, LD, AR, AS.
func isStep(line string) bool {
	if !strings.HasPrefix(line, "  ") {
		return false
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return false
	}
	for _, c := range f[0] {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func readSteps(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

func appendFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	if _, err := io.Copy(w, in); err != nil {
		out.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
