package images

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ManifestName is the manifest's file name inside an image directory.
const ManifestName = "manifest.json"

// ManifestFormat is the version of the manifest layout; Inspect refuses
// other versions rather than guessing.
const ManifestFormat = 1

// maxManifestSize bounds what Inspect reads: a manifest is a few hundred bytes.
const maxManifestSize = 1 << 20

// Manifest describes an image directory. Paths are relative to the
// directory, so the directory can be moved or copied as a whole.
type Manifest struct {
	Format  int    `json:"format"`
	Kernel  string `json:"kernel"`  // vmlinux: ELF, booted through the PVH entry
	BzImage string `json:"bzimage"` // the same kernel for the Linux boot protocol
	Initrd  string `json:"initrd"`  // gzip'd newc cpio with /init
	// Cmdline is the default kernel command line; callers append to it
	// (a later ftvm.workload= wins).
	Cmdline string `json:"cmdline"`
	// SHA256 maps each file above to the hex sha256 of its contents.
	SHA256 map[string]string `json:"sha256"`
	// KernelConfigHash is the kernel cache key: sha256 of the config
	// fragment and the linux-source version.
	KernelConfigHash   string `json:"kernel_config_hash"`
	LinuxSourceVersion string `json:"linux_source_version"`
	FTVMVersion        string `json:"ftvm_version"`
	// Workloads are the names /init accepts in ftvm.workload=, sorted;
	// empty for an image whose /init could not be asked (built for another
	// architecture than the builder's), which then goes unchecked.
	Workloads []string `json:"workloads,omitempty"`
}

// files lists the manifest's files with their roles.
func (m Manifest) files() []struct{ role, name string } {
	return []struct{ role, name string }{{"kernel", m.Kernel}, {"bzimage", m.BzImage}, {"initrd", m.Initrd}}
}

// DecodeManifest parses and validates a manifest without touching files.
func DecodeManifest(data []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("malformed JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, errors.New("malformed JSON: trailing data after the manifest object")
	}
	if m.Format != ManifestFormat {
		return Manifest{}, fmt.Errorf("manifest format %d, this ftctl reads format %d", m.Format, ManifestFormat)
	}
	var errs []error
	seen := map[string]string{}
	for _, f := range m.files() {
		if err := checkRelPath(f.name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.role, err))
			continue
		}
		if other, dup := seen[f.name]; dup {
			errs = append(errs, fmt.Errorf("%s and %s name the same file %q", other, f.role, f.name))
		}
		seen[f.name] = f.role
		sum, ok := m.SHA256[f.name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: no sha256 for %q", f.role, f.name))
		} else if !isHexSHA256(sum) {
			errs = append(errs, fmt.Errorf("%s: sha256 of %q is not 64 lower-case hex digits", f.role, f.name))
		}
	}
	for name := range m.SHA256 {
		if _, ok := seen[name]; !ok {
			errs = append(errs, fmt.Errorf("sha256 lists %q, which is not a file of the image", name))
		}
	}
	if strings.TrimSpace(m.Cmdline) == "" {
		errs = append(errs, errors.New("empty default cmdline"))
	}
	for _, w := range m.Workloads {
		if w == "" || strings.ContainsAny(w, " \t\n=\"") {
			errs = append(errs, fmt.Errorf("workload name %q is not a command-line value", w))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// CheckWorkload says whether cmdline's workload (its last ftvm.workload=,
// "none" without one) is one this image's /init has. An image that does not
// list its workloads accepts any.
func (m Manifest) CheckWorkload(cmdline string) error {
	name := "none"
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "ftvm.workload="); ok {
			name = v
		}
	}
	if len(m.Workloads) == 0 || slices.Contains(m.Workloads, name) {
		return nil
	}
	return fmt.Errorf("ftvm.workload=%s: this image's /init has no such workload; it has %s", name, strings.Join(m.Workloads, ", "))
}

// Encode renders the manifest as indented JSON with a final newline.
func (m Manifest) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func checkRelPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case strings.ContainsAny(p, "\\\x00"), path.IsAbs(p), path.Clean(p) != p, p == ".", p == "..", strings.HasPrefix(p, "../"):
		return fmt.Errorf("path %q must be a clean path inside the image directory", p)
	}
	return nil
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Inspect loads the manifest of the image directory dir and verifies every
// file it names: present, with the recorded sha256, and of the right kind
// (vmlinux a 64-bit x86 ELF, bzImage with the "HdrS" boot header, initrd
// gzip). Every problem found is reported, each naming the file and what to
// do about it.
func Inspect(dir string) (Manifest, error) {
	mpath := filepath.Join(dir, ManifestName)
	f, err := os.Open(mpath)
	if err != nil {
		return Manifest{}, fmt.Errorf("inspect image %s: %w (build one with: ftctl image build --out %s)", dir, err, dir)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	f.Close()
	if err != nil {
		return Manifest{}, fmt.Errorf("inspect image %s: read %s: %w", dir, mpath, err)
	}
	if len(data) > maxManifestSize {
		return Manifest{}, fmt.Errorf("inspect image %s: %s is larger than %d bytes; not an ftvm manifest (rebuild with: ftctl image build --out %s)", dir, mpath, maxManifestSize, dir)
	}
	m, err := DecodeManifest(data)
	if err != nil {
		return Manifest{}, fmt.Errorf("inspect image %s: %s: %w (rebuild with: ftctl image build --out %s)", dir, mpath, err, dir)
	}
	var errs []error
	for _, fl := range m.files() {
		p := filepath.Join(dir, filepath.FromSlash(fl.name))
		sum, err := fileSHA256(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", fl.role, p, err))
			continue
		}
		if sum != m.SHA256[fl.name] {
			errs = append(errs, fmt.Errorf("%s %s: sha256 %s, manifest says %s: the file was changed or is corrupt", fl.role, p, sum, m.SHA256[fl.name]))
		}
		var kindErr error
		switch fl.role {
		case "kernel":
			kindErr = checkVmlinux(p)
		case "bzimage":
			kindErr = checkBzImage(p)
		case "initrd":
			kindErr = checkGzip(p)
		}
		if kindErr != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", fl.role, p, kindErr))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return m, fmt.Errorf("inspect image %s:\n%w\n(rebuild with: ftctl image build --out %s)", dir, err, dir)
	}
	return m, nil
}

// checkVmlinux checks that p is a complete 64-bit x86 ELF executable.
func checkVmlinux(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("not a valid ELF kernel (truncated or corrupt?): %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return fmt.Errorf("ELF %v %v %v, want a 64-bit x86-64 executable", f.Class, f.Machine, f.Type)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	for _, prog := range f.Progs {
		size := uint64(fi.Size())
		if prog.Type == elf.PT_LOAD && (prog.Off > size || prog.Filesz > size-prog.Off) {
			return fmt.Errorf("truncated or corrupt: a loadable segment (offset %d, %d bytes) lies outside the %d-byte file", prog.Off, prog.Filesz, size)
		}
	}
	return nil
}

// checkBzImage checks the Linux boot protocol header: "HdrS" at 0x202 and
// a file long enough for the setup sectors it announces.
func checkBzImage(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var hdr [0x206]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return fmt.Errorf("too short for a bzImage header: %w", err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return errors.New("no \"HdrS\" boot protocol signature at offset 0x202: not a bzImage")
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	setupSects := int64(hdr[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	// syssize (0x1f4) counts the protected-mode part in 16-byte paragraphs.
	sysSize := int64(hdr[0x1f4]) | int64(hdr[0x1f5])<<8 | int64(hdr[0x1f6])<<16 | int64(hdr[0x1f7])<<24
	if want := (setupSects+1)*512 + sysSize*16; fi.Size() < want {
		return fmt.Errorf("truncated: header announces %d bytes, file has %d", want, fi.Size())
	}
	return nil
}

func checkGzip(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [2]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || magic != [2]byte{0x1f, 0x8b} {
		return errors.New("not gzip data")
	}
	return nil
}

// Summary renders the manifest for people.
func (m Manifest) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kernel:  %s\nbzimage: %s\ninitrd:  %s\ncmdline: %s\n", m.Kernel, m.BzImage, m.Initrd, m.Cmdline)
	names := make([]string, 0, len(m.SHA256))
	for n := range m.SHA256 {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "sha256:  %s  %s\n", m.SHA256[n], n)
	}
	fmt.Fprintf(&b, "kernel config hash: %s\nlinux-source: %s\nftvm: %s\n", m.KernelConfigHash, m.LinuxSourceVersion, m.FTVMVersion)
	return b.String()
}

// guestExitPrefix starts the line the image's /init prints just before it
// powers the guest off: "ftvm-guest exit status=N".
const guestExitPrefix = "ftvm-guest exit status="

// GuestExitStatus finds the last exit line of the image's /init in console
// output and returns its status; ok is false when there is none (another
// init, or a guest that died before it).
func GuestExitStatus(console string) (status int, ok bool) {
	i := strings.LastIndex(console, guestExitPrefix)
	if i < 0 || (i > 0 && console[i-1] != '\n') {
		return 0, false
	}
	rest := console[i+len(guestExitPrefix):]
	if j := strings.IndexAny(rest, "\r\n"); j >= 0 {
		rest = rest[:j]
	}
	n, err := strconv.Atoi(rest)
	if err != nil {
		return 0, false
	}
	return n, true
}
