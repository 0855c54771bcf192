package storage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/hostsetup"
	"github.com/ftvm/ftvm/internal/testenv"
)

// Environment variables that turn the test binary into a lock-holding
// helper process (see TestMain).
const (
	helperDirEnv  = "FTVM_STORAGE_TEST_HELPER_DIR"
	helperDiskEnv = "FTVM_STORAGE_TEST_HELPER_DISK"
)

// TestMain lets the lock test re-execute this binary as a second process
// that opens a disk, says so on stdout, and holds it until stdin closes.
func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		os.Exit(holdDisk(dir, os.Getenv(helperDiskEnv)))
	}
	os.Exit(m.Run())
}

func holdDisk(dir, name string) int {
	s, err := Open(dir)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	d, err := s.OpenDisk(name)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if _, err := d.WriteAt([]byte("held"), 0); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("holding")
	io.Copy(io.Discard, os.Stdin)
	if err := d.Close(); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	return 0
}

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "storage"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func createDisk(t *testing.T, s *Store, name string, size int64) *Metadata {
	t.Helper()
	m, err := s.CreateDisk(context.Background(), name, size, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCreateDiskIsSparse(t *testing.T) {
	s := newStore(t)
	const size = 1 << 30
	m := createDisk(t, s, "data", size)
	if m.Size != size || m.Name != "data" || m.FormatVersion != MetadataFormatVersion || m.Generation != 0 {
		t.Fatalf("metadata = %+v", m)
	}
	if len(m.ID) == 0 || len(m.ID) > MaxIDLen {
		t.Fatalf("id %q: want 1..%d bytes", m.ID, MaxIDLen)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(s.Dir(), "data.img"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Fatalf("image size %d, want %d", st.Size, size)
	}
	// A 1 GiB image written with zeros would hold 2 Mi blocks; sparse
	// holds none (allow a little for filesystems that preallocate).
	if alloc := st.Blocks * 512; alloc > 1<<20 {
		t.Fatalf("image occupies %d bytes on disk; want a sparse file", alloc)
	}
	info, err := s.Inspect("data")
	if err != nil {
		t.Fatal(err)
	}
	if info.Allocated != st.Blocks*512 || info.InUse || info.Metadata.ID != m.ID {
		t.Fatalf("inspect = %+v", info)
	}
	// The metadata file is the same on reread, and no temp files remain.
	got, err := s.Metadata("data")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || !got.Created.Equal(m.Created) || got.Size != m.Size {
		t.Fatalf("reread metadata %+v, want %+v", got, m)
	}
	entries, _ := os.ReadDir(s.Dir())
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "data.img data.json" {
		t.Fatalf("directory holds %v", names)
	}
}

func TestCreateDiskRefusesOverwrite(t *testing.T) {
	s := newStore(t)
	createDisk(t, s, "d1", 1<<20)
	d, err := s.OpenDisk("d1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("keep me"), 4096); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := s.CreateDisk(context.Background(), "d1", 2<<20, CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: err = %v, want ErrExists", err)
	}
	// The old disk is untouched.
	d, err = s.OpenDisk("d1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 7)
	if _, err := d.ReadAt(buf, 4096); err != nil || string(buf) != "keep me" || d.Size() != 1<<20 {
		t.Fatalf("after refused create: %q, %v, size %d", buf, err, d.Size())
	}

	// A stray image without metadata (an interrupted create) also blocks
	// the name, and the error says what to do.
	if err := os.WriteFile(filepath.Join(s.Dir(), "stray.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = s.CreateDisk(context.Background(), "stray", 1<<20, CreateOptions{})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "without metadata") {
		t.Fatalf("create over stray image: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "stray.img")); err != nil {
		t.Fatalf("stray image removed by failed create: %v", err)
	}
}

func TestCreateDiskBadArguments(t *testing.T) {
	s := newStore(t)
	for _, name := range []string{"", ".", "..", "a/b", "../x", "/abs", `a\b`, ".hidden", "-flag", "sp ace", "tab\t", "nul\x00", "é", strings.Repeat("x", 129)} {
		_, err := s.CreateDisk(context.Background(), name, 1<<20, CreateOptions{})
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("name %q: err = %v, want ErrInvalidName", name, err)
		}
	}
	for _, name := range []string{"a", "disk-1", "vm_7.root", strings.Repeat("x", 128)} {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v", name, err)
		}
	}
	for _, size := range []int64{0, -4096, 1000, 4097, MaxSize + SizeAlign} {
		if _, err := s.CreateDisk(context.Background(), "sz", size, CreateOptions{}); err == nil {
			t.Errorf("size %d accepted", size)
		}
	}
	if _, err := s.CreateDisk(context.Background(), "fs", 1<<20, CreateOptions{Filesystem: "xfs"}); err == nil {
		t.Error("filesystem xfs accepted")
	}
	// Nothing was left behind by the refusals.
	if entries, _ := os.ReadDir(s.Dir()); len(entries) != 0 {
		t.Fatalf("refused creates left %d files", len(entries))
	}
}

func TestCreateDiskExt4(t *testing.T) {
	ctx := context.Background()
	if err := hostsetup.Ensure(ctx, io.Discard,
		hostsetup.Requirement{Path: "mkfs.ext4", Package: "e2fsprogs"},
		hostsetup.Requirement{Path: "dumpe2fs", Package: "e2fsprogs"}); err != nil {
		testenv.Skipf(t, "no e2fsprogs: %v", err)
	}
	s := newStore(t)
	m, err := s.CreateDisk(ctx, "root", 64<<20, CreateOptions{Filesystem: FilesystemExt4})
	if err != nil {
		t.Fatal(err)
	}
	if m.Filesystem != FilesystemExt4 {
		t.Fatalf("metadata filesystem %q", m.Filesystem)
	}
	info, err := s.Inspect("root")
	if err != nil {
		t.Fatal(err)
	}
	if info.Allocated >= 64<<20/2 {
		t.Errorf("formatted image occupies %d bytes; mkfs should leave it mostly sparse", info.Allocated)
	}
	out, err := exec.Command("dumpe2fs", "-h", info.ImagePath).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	for _, want := range []string{"Filesystem volume name:   root", "Filesystem magic number:  0xEF53", "Block size:"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("dumpe2fs output lacks %q:\n%s", want, out)
		}
	}
	// The superblock's magic is visible through Disk too (offset 1024+56).
	d, err := s.OpenDisk("root")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	magic := make([]byte, 2)
	if _, err := d.ReadAt(magic, 1024+56); err != nil || magic[0] != 0x53 || magic[1] != 0xef {
		t.Fatalf("ext4 magic through Disk: % x, %v", magic, err)
	}
}

func TestReopenSeesData(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	createDisk(t, s, "data", 1<<20)
	d, err := s.OpenDisk("data")
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("ftvm"), 1024)
	if n, err := d.WriteAt(payload, 512*7); err != nil || n != len(payload) {
		t.Fatalf("write: %d, %v", n, err)
	}
	// The last byte of the disk is writable; one past it is not.
	if _, err := d.WriteAt([]byte{0xAA}, d.Size()-1); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}

	// A fresh Store on the same directory (another VMM, a restart).
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s2.OpenDisk("data")
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	got := make([]byte, len(payload))
	if _, err := d2.ReadAt(got, 512*7); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("reread: %v, equal=%v", err, bytes.Equal(got, payload))
	}
	last := make([]byte, 1)
	if _, err := d2.ReadAt(last, d2.Size()-1); err != nil || last[0] != 0xAA {
		t.Fatalf("last byte %x, %v", last, err)
	}
	zero := make([]byte, 512)
	if _, err := d2.ReadAt(zero, 0); err != nil || !bytes.Equal(zero, make([]byte, 512)) {
		t.Fatalf("unwritten sector not zero: %v", err)
	}
}

func TestOutOfRange(t *testing.T) {
	s := newStore(t)
	createDisk(t, s, "r", 1<<20)
	d, err := s.OpenDisk("r")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cases := []struct {
		n   int
		off int64
	}{{1, d.Size()}, {2, d.Size() - 1}, {1, -1}, {512, 1 << 62}, {1, -1 << 63}}
	for _, c := range cases {
		if _, err := d.ReadAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("read %d at %d: %v", c.n, c.off, err)
		}
		if _, err := d.WriteAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("write %d at %d: %v", c.n, c.off, err)
		}
	}
	// The refused writes did not grow the image.
	info, err := s.Inspect("r")
	if err != nil || info.Size != 1<<20 {
		t.Fatalf("inspect after refused writes: %+v, %v", info, err)
	}
}

func TestReadOnly(t *testing.T) {
	s := newStore(t)
	createDisk(t, s, "ro", 1<<20)
	r1, err := s.OpenDiskReadOnly("ro")
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	if !r1.ReadOnly() {
		t.Fatal("ReadOnly() = false")
	}
	if _, err := r1.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to read-only disk: %v", err)
	}
	if err := r1.Flush(); err != nil {
		t.Fatalf("flush read-only: %v", err)
	}
	// A second Store (another VMM, by its lock) may also read, but nobody
	// may write while readers hold it.
	s2, _ := Open(s.Dir())
	r2, err := s2.OpenDiskReadOnly("ro")
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	defer r2.Close()
	s3, _ := Open(s.Dir())
	if _, err := s3.OpenDisk("ro"); !errors.Is(err, ErrLocked) {
		t.Fatalf("writer beside readers: %v", err)
	}
}

func TestLockInProcess(t *testing.T) {
	s := newStore(t)
	createDisk(t, s, "busy", 1<<20)
	d, err := s.OpenDisk("busy")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.OpenDisk("busy")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "already open in this process") || !strings.Contains(err.Error(), `"busy"`) {
		t.Fatalf("second open through the same Store: %v", err)
	}
	// A second Store in this process is stopped by the flock itself, and
	// the message names the holder (this process).
	s2, _ := Open(s.Dir())
	_, err = s2.OpenDisk("busy")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second open through another Store: %v", err)
	}
	info, err := s.Inspect("busy")
	if err != nil || !info.InUse || !strings.Contains(info.Holder, fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("inspect of a held disk: %+v, %v", info, err)
	}
	// The inspect probe did not disturb the holder; after Close, both
	// Stores can open it again.
	if _, err := d.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if info, _ := s.Inspect("busy"); info.InUse {
		t.Fatal("inspect says in use after Close")
	}
	d2, err := s2.OpenDisk("busy")
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	d2.Close()
}

// TestLockAcrossProcesses holds a disk in a child process (this test
// binary re-executed) and checks that this process cannot open it, that the
// error names the child, and that the disk is free once the child exits.
func TestLockAcrossProcesses(t *testing.T) {
	s := newStore(t)
	createDisk(t, s, "shared", 1<<20)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+s.Dir(), helperDiskEnv+"=shared")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "holding\n" {
		t.Fatalf("helper said %q, %v", line, err)
	}

	_, err = s.OpenDisk("shared")
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("open while another process holds it: %v", err)
	}
	for _, want := range []string{`"shared"`, fmt.Sprintf("pid %d", cmd.Process.Pid), s.Dir()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("lock error %q does not mention %s", err, want)
		}
	}
	if _, err := s.OpenDiskReadOnly("shared"); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only open beside a writer: %v", err)
	}

	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	d, err := s.OpenDisk("shared")
	if err != nil {
		t.Fatalf("open after the holder exited: %v", err)
	}
	defer d.Close()
	buf := make([]byte, 4)
	if _, err := d.ReadAt(buf, 0); err != nil || string(buf) != "held" {
		t.Fatalf("child's write: %q, %v", buf, err)
	}
}

// A process that dies holding the lock (SIGKILL, no Close) releases it:
// the kernel drops flocks with the last descriptor.
func TestLockReleasedWhenHolderDies(t *testing.T) {
	s := newStore(t)
	createDisk(t, s, "crash", 1<<20)
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+s.Dir(), helperDiskEnv+"=crash")
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "holding\n" {
		t.Fatalf("helper said %q", line)
	}
	cmd.Process.Kill()
	cmd.Wait()
	d, err := s.OpenDisk("crash")
	if err != nil {
		t.Fatalf("open after holder was killed: %v", err)
	}
	d.Close()
}

func TestOpenDiskErrors(t *testing.T) {
	s := newStore(t)
	if _, err := s.OpenDisk("missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open missing: %v", err)
	}
	if _, err := s.OpenDisk("../etc"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("open bad name: %v", err)
	}
	createDisk(t, s, "short", 1<<20)
	if err := os.Truncate(filepath.Join(s.Dir(), "short.img"), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenDisk("short"); err == nil || !strings.Contains(err.Error(), "metadata says") {
		t.Fatalf("open truncated image: %v", err)
	}
	createDisk(t, s, "bad", 1<<20)
	if err := os.WriteFile(filepath.Join(s.Dir(), "bad.json"), []byte(`{"format_version":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenDisk("bad"); err == nil || !strings.Contains(err.Error(), "bad.json") {
		t.Fatalf("open with invalid metadata: %v", err)
	}
	// Metadata claiming another name (renamed by hand) is refused.
	createDisk(t, s, "orig", 1<<20)
	if err := os.Rename(filepath.Join(s.Dir(), "orig.json"), filepath.Join(s.Dir(), "renamed.json")); err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(s.Dir(), "orig.img"), filepath.Join(s.Dir(), "renamed.img"))
	if _, err := s.OpenDisk("renamed"); err == nil || !strings.Contains(err.Error(), `names disk "orig"`) {
		t.Fatalf("open renamed disk: %v", err)
	}
}

func TestListDisks(t *testing.T) {
	s := newStore(t)
	if disks, err := s.ListDisks(); err != nil || len(disks) != 0 {
		t.Fatalf("empty store: %v, %v", disks, err)
	}
	createDisk(t, s, "b", 2<<20)
	createDisk(t, s, "a", 1<<20)
	createDisk(t, s, "c", 1<<20)
	os.WriteFile(filepath.Join(s.Dir(), "c.json"), []byte("{"), 0o644)
	os.WriteFile(filepath.Join(s.Dir(), ".tmp.json"), []byte("{"), 0o644)
	os.WriteFile(filepath.Join(s.Dir(), "notes.txt"), []byte("x"), 0o644)
	disks, err := s.ListDisks()
	if len(disks) != 2 || disks[0].Name != "a" || disks[1].Name != "b" || disks[1].Size != 2<<20 {
		t.Fatalf("list = %v", disks)
	}
	if err == nil || !strings.Contains(err.Error(), `"c"`) {
		t.Fatalf("list error should name the corrupt disk c: %v", err)
	}
}

func TestWriteFileAtomicExclusive(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	if err := writeFileAtomic(p, []byte("one"), true); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(p, []byte("two"), true); !errors.Is(err, ErrExists) {
		t.Fatalf("exclusive over existing: %v", err)
	}
	if err := writeFileAtomic(p, []byte("three"), false); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	entries, _ := os.ReadDir(dir)
	if string(b) != "three" || len(entries) != 1 {
		t.Fatalf("content %q, %d entries", b, len(entries))
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv(EnvStorageDir, "/srv/ftvm")
	if d, _ := DefaultDir(); d != "/srv/ftvm" {
		t.Fatalf("with %s: %s", EnvStorageDir, d)
	}
	t.Setenv(EnvStorageDir, "")
	t.Setenv("XDG_DATA_HOME", "/xdg")
	if d, _ := DefaultDir(); d != "/xdg/ftvm/storage" {
		t.Fatalf("with XDG_DATA_HOME: %s", d)
	}
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d, _ := DefaultDir(); d != "/home/u/.local/share/ftvm/storage" {
		t.Fatalf("default: %s", d)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"4096": 4096, "512M": 512 << 20, "1G": 1 << 30, "10GiB": 10 << 30, "64k": 64 << 10,
		"2t": 2 << 40, "100b": 100, " 1 G ": 1 << 30, "3MiB": 3 << 20, "1TiB": 1 << 40,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                     "empty",
		"G":                    "whole number",
		"-1G":                  "whole number",
		"1.5G":                 "whole numbers",
		"1GB":                  "ambiguous",
		"1mb":                  "ambiguous",
		"1X":                   "unknown unit",
		"1Gi":                  "unknown unit",
		"99999999999999999999": "too large",
		"9000000000T":          "too large",
	}
	for in, want := range bad {
		_, err := ParseSize(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSize(%q) = %v; want an error mentioning %q", in, err, want)
		}
	}
	for _, n := range []int64{1, 4096, 1536 << 20, 1 << 30, 3 << 40, 1<<30 + 1} {
		if got, err := ParseSize(FormatSize(n)); err != nil || got != n {
			t.Errorf("round trip %d -> %q -> %d, %v", n, FormatSize(n), got, err)
		}
	}
}

func TestMetadataValidation(t *testing.T) {
	good := func() *Metadata {
		return &Metadata{FormatVersion: 1, Name: "d", Size: 1 << 20, Created: time.Unix(1e9, 0).UTC(), ID: "ftvm-0123456789ab"}
	}
	b, err := EncodeMetadata(good())
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeMetadata(b)
	if err != nil || *m != *good() {
		t.Fatalf("round trip: %+v, %v", m, err)
	}
	for what, mutate := range map[string]func(*Metadata){
		"newer":     func(m *Metadata) { m.FormatVersion = 2 },
		"version 0": func(m *Metadata) { m.FormatVersion = 0 },
		"name":      func(m *Metadata) { m.Name = "../x" },
		"size":      func(m *Metadata) { m.Size = 1000 },
		"created":   func(m *Metadata) { m.Created = time.Time{} },
		"empty id":  func(m *Metadata) { m.ID = "" },
		"long id":   func(m *Metadata) { m.ID = strings.Repeat("a", 21) },
		"id space":  func(m *Metadata) { m.ID = "a b" },
		"fs":        func(m *Metadata) { m.Filesystem = "zfs" },
	} {
		m := good()
		mutate(m)
		if _, err := EncodeMetadata(m); err == nil {
			t.Errorf("%s: encoded an invalid metadata", what)
		}
	}
	for _, in := range []string{
		`{"format_version":1,"name":"d","size":1048576,"created":"2001-09-09T01:46:40Z","id":"x","extra":1}`,
		`{"format_version":1,"name":"d","size":1048576,"created":"2001-09-09T01:46:40Z","id":"x"} {}`,
		`{"format_version":1,"name":"d","size":1048576,"created":"2001-09-09T01:46:40Z","id":"x","generation":-1}`,
		`null`, `[]`, ``,
	} {
		if _, err := DecodeMetadata([]byte(in)); err == nil {
			t.Errorf("decoded %s", in)
		}
	}
}

func FuzzDecodeMetadata(f *testing.F) {
	seed, _ := EncodeMetadata(&Metadata{FormatVersion: 1, Name: "disk", Size: 1 << 30,
		Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Generation: 7, ID: "ftvm-00112233aabb", Filesystem: FilesystemExt4})
	f.Add(seed)
	f.Add([]byte(`{"format_version":1,"name":"a","size":4096,"created":"2026-01-01T00:00:00Z","id":"i"}`))
	f.Add([]byte(`{"format_version":1,"name":"a","size":4096,"created":"2026-01-01T00:00:00Z","id":"i","generation":18446744073709551615}`))
	f.Add([]byte(`{"format_version":2}`))
	f.Add([]byte(`{"size":1e400}`))
	f.Add([]byte("{}\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMetadata(data)
		if err != nil {
			return
		}
		// Whatever decodes satisfies every invariant the VMM relies on.
		if m.Size <= 0 || m.Size%SizeAlign != 0 || m.Size > MaxSize || len(m.ID) == 0 || len(m.ID) > MaxIDLen || ValidateName(m.Name) != nil {
			t.Fatalf("decoded invalid metadata %+v", m)
		}
		// And it survives a round trip unchanged.
		b, err := EncodeMetadata(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		m2, err := DecodeMetadata(b)
		if err != nil {
			t.Fatalf("decode re-encoded %s: %v", b, err)
		}
		if !m.Created.Equal(m2.Created) || m.Name != m2.Name || m.Size != m2.Size || m.ID != m2.ID ||
			m.Generation != m2.Generation || m.Filesystem != m2.Filesystem || m.FormatVersion != m2.FormatVersion {
			t.Fatalf("round trip changed %+v to %+v", m, m2)
		}
	})
}
