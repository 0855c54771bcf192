package kvmhost

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ftvm/ftvm/internal/hostsetup"
)

// cloudKernelMeta is the Debian metapackage whose first dependency is the
// current prebuilt cloud kernel. Its KVM support is built as modules, which
// is what the nested host loads.
const cloudKernelMeta = "linux-image-cloud-amd64"

// kvmModules are loaded, with their dependencies, in every nested host.
var kvmModules = []string{"kvm-amd"} //nolint:gochecknoglobals // constant list

// hostKernel is an unpacked Debian kernel package: the kernel image and its
// module tree.
type hostKernel struct {
	Package string // e.g. linux-image-6.1.0-56-cloud-amd64_6.1.192-2
	Image   string // path of vmlinuz
	Modules string // path of lib/modules/<release>
}

// hostRequirements are the host tools a nested host needs.
var hostRequirements = []hostsetup.Requirement{ //nolint:gochecknoglobals // constant list
	{Path: "qemu-system-x86_64", Package: "qemu-system-x86"},
	{Path: "/bin/busybox", Package: "busybox-static"},
	{Path: "dpkg-deb", Package: "dpkg"},
	{Path: "ldd", Package: "libc-bin"},
}

// ensureHostKernel returns the cached unpacked cloud kernel, downloading and
// unpacking the package (not installing it) on first use. The package is
// only fetched, never installed, so the host's own kernel setup is untouched.
func ensureHostKernel(ctx context.Context, progress io.Writer) (hostKernel, error) {
	cache, err := hostsetup.CacheDir("kvmhost/kernel")
	if err != nil {
		return hostKernel{}, err
	}
	if k, ok := newestCachedKernel(cache); ok {
		return k, nil
	}
	pkg, err := resolveCloudKernel(ctx, progress)
	if err != nil {
		return hostKernel{}, err
	}
	fmt.Fprintf(progress, "ftvm: downloading %s for the nested KVM host (once; cached in %s)\n", pkg, cache)
	tmp, err := os.MkdirTemp(cache, ".download-")
	if err != nil {
		return hostKernel{}, fmt.Errorf("nested host kernel: %w", err)
	}
	defer os.RemoveAll(tmp)
	dl := exec.CommandContext(ctx, "apt-get", "download", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return hostKernel{}, fmt.Errorf("apt-get download %s: %w\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return hostKernel{}, fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", pkg, tmp, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return hostKernel{}, fmt.Errorf("unpack %s: %w\n%s", debs[0], err, out)
	}
	name := strings.TrimSuffix(filepath.Base(debs[0]), "_amd64.deb")
	final := filepath.Join(cache, name)
	if err := os.Rename(root, final); err != nil {
		return hostKernel{}, fmt.Errorf("store unpacked kernel %s: %w", final, err)
	}
	k, ok := unpackedKernel(final)
	if !ok {
		return hostKernel{}, fmt.Errorf("package %s has no boot/vmlinuz-* and lib/modules/*", pkg)
	}
	return k, nil
}

func resolveCloudKernel(ctx context.Context, progress io.Writer) (string, error) {
	depends := func() string {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", cloudKernelMeta).Output()
		if err != nil {
			return ""
		}
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
				return f[1]
			}
		}
		return ""
	}
	if pkg := depends(); pkg != "" {
		return pkg, nil
	}
	// A fresh machine may have no package lists yet.
	if err := hostsetup.AptGet(ctx, progress, "update", "-q"); err != nil {
		return "", err
	}
	if pkg := depends(); pkg != "" {
		return pkg, nil
	}
	return "", fmt.Errorf("cannot resolve %s to a kernel package (apt-cache depends %s found none)", cloudKernelMeta, cloudKernelMeta)
}

func newestCachedKernel(cache string) (hostKernel, bool) {
	entries, err := os.ReadDir(cache)
	if err != nil {
		return hostKernel{}, false
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "linux-image-") {
			names = append(names, e.Name())
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	for _, n := range names {
		if k, ok := unpackedKernel(filepath.Join(cache, n)); ok {
			return k, true
		}
	}
	return hostKernel{}, false
}

func unpackedKernel(dir string) (hostKernel, bool) {
	images, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(images) != 1 || len(mods) != 1 {
		return hostKernel{}, false
	}
	return hostKernel{Package: filepath.Base(dir), Image: images[0], Modules: mods[0]}, true
}

// moduleLoadOrder returns the module files to insmod, dependencies first,
// for the named modules. Debian's package ships no modules.dep (depmod runs
// at install time), so dependencies come from each module's .modinfo.
func moduleLoadOrder(modRoot string, names []string) ([]string, error) {
	index := map[string]string{} // canonical name -> path
	err := filepath.WalkDir(filepath.Join(modRoot, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[canonicalModule(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", modRoot, err)
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = canonicalModule(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		path, ok := index[name]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) not found under %s", name, from, modRoot)
		}
		state[name] = 1
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, path)
		return nil
	}
	for _, n := range names {
		if err := visit(n, "the nested host"); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func canonicalModule(name string) string { return strings.ReplaceAll(name, "-", "_") }

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// sharedLibraries lists the files a dynamically linked executable needs at
// run time (its interpreter and libraries), as absolute host paths. A static
// executable needs none.
func sharedLibraries(ctx context.Context, exe string) ([]string, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return nil, nil // not an ELF file (a script): nothing to add
	}
	dynamic := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			dynamic = true
		}
	}
	f.Close()
	if !dynamic {
		return nil, nil
	}
	out, err := exec.CommandContext(ctx, "ldd", exe).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", exe, err)
	}
	var libs []string
	for _, l := range strings.Split(string(out), "\n") {
		for _, field := range strings.Fields(l) {
			if strings.HasPrefix(field, "/") {
				libs = append(libs, field)
			}
		}
	}
	return libs, nil
}
