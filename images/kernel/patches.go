package kernel

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
)

// Patch is one committed patch to the kernel source: a unified diff with
// a/ and b/ prefixes (patch -p1), optionally preceded by a description,
// as git format-patch writes it.
type Patch struct {
	Name string // file name in patches/, e.g. 0001-x86-tsc-….patch
	Data []byte
}

//go:embed patches/*.patch
var patchFS embed.FS

// NoTSCBootLine is the kernel message of patch 0002 when the CPU has no
// TSC and user-mode RDTSC is emulated from the clocksource.
const NoTSCBootLine = "ftvm: no TSC: user RDTSC emulated from the clocksource"

// patchNameRe is the naming rule of patches/: a four-digit sequence number
// fixes the order they are applied in.
var patchNameRe = regexp.MustCompile(`^[0-9]{4}-[a-z0-9][a-z0-9.-]*\.patch$`)

// Patches returns the committed patches in the order they are applied.
func Patches() []Patch {
	ps, err := readPatches(patchFS, "patches")
	if err != nil {
		// The files are compiled in; TestCommittedPatches catches this first.
		panic(fmt.Sprintf("kernel: committed patches: %v", err))
	}
	return ps
}

// readPatches reads dir's *.patch files in name order and checks each.
func readPatches(fsys fs.FS, dir string) ([]Patch, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var ps []Patch
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".patch") {
			continue
		}
		data, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ps = append(ps, Patch{Name: e.Name(), Data: data})
	}
	if err := checkPatches(ps); err != nil {
		return nil, err
	}
	return ps, nil
}

// checkPatches enforces the naming rule, a strict order by name and that
// every patch changes at least one file inside the tree.
func checkPatches(ps []Patch) error {
	for i, p := range ps {
		if !patchNameRe.MatchString(p.Name) {
			return fmt.Errorf("patch %q: name must look like NNNN-some-name.patch", p.Name)
		}
		if i > 0 && ps[i-1].Name[:4] >= p.Name[:4] {
			return fmt.Errorf("patches %s and %s: sequence numbers must increase", ps[i-1].Name, p.Name)
		}
		if _, err := PatchedFiles(p.Data); err != nil {
			return fmt.Errorf("patch %s: %w", p.Name, err)
		}
	}
	return nil
}

// PatchedFiles lists the files a unified diff changes, creates or deletes,
// as paths relative to the tree it applies to with patch -p1. It rejects a
// diff without files and any path that is absolute, lacks the a/ or b/
// prefix, or leaves the tree.
func PatchedFiles(data []byte) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var minus string
	haveMinus := false
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "--- "):
			minus, haveMinus = diffPath(line[4:]), true
		case strings.HasPrefix(line, "+++ ") && haveMinus:
			haveMinus = false
			name := diffPath(line[4:])
			if name == "/dev/null" { // a deletion: the old name is the file
				name = minus
			}
			rel, err := stripPrefix(name)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			if !seen[rel] {
				seen[rel] = true
				files = append(files, rel)
			}
		default:
			haveMinus = false
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no ---/+++ file headers: not a unified diff")
	}
	sort.Strings(files)
	return files, nil
}

// diffPath takes the name from a ---/+++ header, without the timestamp
// diff puts after a tab.
func diffPath(s string) string {
	if i := strings.IndexByte(s, '\t'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// stripPrefix removes the a/ or b/ of patch -p1 and checks what is left.
func stripPrefix(name string) (string, error) {
	i := strings.IndexByte(name, '/')
	if i < 0 || (name[:i] != "a" && name[:i] != "b") {
		return "", fmt.Errorf("file %q: want an a/ or b/ prefix (patch -p1)", name)
	}
	rel := name[i+1:]
	if rel == "" || path.IsAbs(rel) || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("file %q: not a clean path inside the source tree", name)
	}
	return rel, nil
}

// patchedSource makes the tree a build with patches compiles: dir, a
// hard-link farm of the shared, pristine source (cp -al: seconds and a few
// tens of MB of directory entries, against a minute and 1.4 GB for a
// private unpack), with ps applied in order. Before a patch runs, every
// file it touches is replaced in the farm by a private copy, so no write
// can reach the shared tree through a link, whatever patch(1) does; the
// pristine tree therefore keeps serving unpatched and differently patched
// builds. A patch that does not apply exactly (no fuzz) fails the build
// with its name and patch's output.
func patchedSource(ctx context.Context, pristine, dir string, ps []Patch, log io.Writer) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "cp", "-al", pristine, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("link source tree %s to %s: %w\n%s", pristine, dir, err, out)
	}
	for _, p := range ps {
		if err := applyPatch(ctx, dir, p, log); err != nil {
			return err
		}
	}
	return nil
}

// applyPatch applies one patch to the tree at dir.
func applyPatch(ctx context.Context, dir string, p Patch, log io.Writer) error {
	files, err := PatchedFiles(p.Data)
	if err != nil {
		return fmt.Errorf("kernel patch %s: %w", p.Name, err)
	}
	for _, f := range files {
		if err := unshare(filepath.Join(dir, filepath.FromSlash(f))); err != nil {
			return fmt.Errorf("kernel patch %s: %w", p.Name, err)
		}
	}
	cmd := exec.CommandContext(ctx, "patch", "-p1", "--batch", "--forward", "--fuzz=0",
		"--no-backup-if-mismatch", "--reject-file=-", "-d", dir)
	cmd.Stdin = bytes.NewReader(p.Data)
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(log, "kernel: patch %s\n%s", p.Name, out)
	if err != nil {
		return fmt.Errorf("kernel patch %s does not apply: %w\n%s", p.Name, err, strings.TrimRight(string(out), "\n"))
	}
	return nil
}

// unshare gives path its own inode if it is a regular file with other
// hard links, keeping its contents and mode. A missing file (one the
// patch creates) is left alone.
func unshare(p string) error {
	fi, err := os.Lstat(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || linkCount(fi) <= 1 {
		return nil
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	tmp := p + ".ftvm-unshare"
	if err := os.WriteFile(tmp, data, fi.Mode().Perm()); err != nil {
		return err
	}
	if err := os.Chmod(tmp, fi.Mode().Perm()); err != nil { // umask
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, p)
}

func linkCount(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 2 // unknown: copy, to be safe
}

// patchNames lists the names of ps.
func patchNames(ps []Patch) []string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name
	}
	return names
}
