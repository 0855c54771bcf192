// Package hostsetup owns what ftvm needs from the host machine outside the
// repository: the cache directory for large downloads and builds, and the
// Debian packages that provide external tools (qemu, busybox, the kernel
// source). Every tool that needs a package asks here, so a fresh Debian
// machine sets itself up instead of failing on a missing binary.
package hostsetup

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// CacheDir returns (and creates) a directory under the ftvm cache for sub.
// The cache lives outside any checkout so that expensive results (kernel
// builds, downloaded packages) survive a fresh clone. FTVM_CACHE overrides
// the default of $XDG_CACHE_HOME/ftvm (usually ~/.cache/ftvm).
func CacheDir(sub string) (string, error) {
	root := os.Getenv("FTVM_CACHE")
	if root == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("find cache directory (set FTVM_CACHE): %w", err)
		}
		root = filepath.Join(base, "ftvm")
	}
	dir := filepath.Join(root, sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create cache directory %s: %w", dir, err)
	}
	return dir, nil
}

// Requirement names something that must be present on the host and the
// Debian package that provides it.
type Requirement struct {
	// Path is an absolute file path, or a command name looked up in PATH.
	Path    string
	Package string
}

func (r Requirement) present() bool {
	if filepath.IsAbs(r.Path) {
		_, err := os.Stat(r.Path)
		return err == nil
	}
	_, err := exec.LookPath(r.Path)
	return err == nil
}

// Ensure installs, with apt-get, the packages of every requirement that is
// missing. Progress (apt's own output) goes to progress. It fails with a
// message naming the missing paths when installation is impossible (not
// root, no apt-get).
func Ensure(ctx context.Context, progress io.Writer, reqs ...Requirement) error {
	var missing []Requirement
	for _, r := range reqs {
		if !r.present() {
			missing = append(missing, r)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	pkgs := map[string]bool{}
	var names, paths []string
	for _, r := range missing {
		if !pkgs[r.Package] {
			pkgs[r.Package] = true
			names = append(names, r.Package)
		}
		paths = append(paths, r.Path)
	}
	if len(names) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fmt.Errorf("missing %s: install Debian packages %s (needs root and apt-get)",
			strings.Join(paths, ", "), strings.Join(names, " "))
	}
	if progress == nil {
		progress = io.Discard
	}
	fmt.Fprintf(progress, "ftvm: installing Debian packages %s (for %s)\n", strings.Join(names, " "), strings.Join(paths, ", "))
	if err := AptGet(ctx, progress, append([]string{"install", "-y", "-q", "--no-install-recommends"}, names...)...); err != nil {
		// The package lists may be missing or stale on a fresh machine.
		if uerr := AptGet(ctx, progress, "update", "-q"); uerr != nil {
			return fmt.Errorf("apt-get update: %w", uerr)
		}
		if err := AptGet(ctx, progress, append([]string{"install", "-y", "-q", "--no-install-recommends"}, names...)...); err != nil {
			return fmt.Errorf("install Debian packages %s: %w", strings.Join(names, " "), err)
		}
	}
	for _, r := range missing {
		if !r.present() {
			return fmt.Errorf("installed %s but %s is still missing", r.Package, r.Path)
		}
	}
	return nil
}

// AptGet runs apt-get non-interactively with args, its output going to out.
// Concurrent installs (two test packages, or a user's own apt) wait for
// apt's lock instead of failing.
func AptGet(ctx context.Context, out io.Writer, args ...string) error {
	args = append([]string{"-o", "DPkg::Lock::Timeout=600"}, args...)
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("apt-get %s: %w", strings.Join(args, " "), err)
	}
	return nil
}
