package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/internal/hostsetup"
	"golang.org/x/sys/unix"
)

// File name suffixes inside a storage directory. A disk NAME is the three
// files NAME.img (the raw image), NAME.json (its Metadata) and NAME.lock
// (the advisory lock and the identity of its holder).
const (
	imageSuffix = ".img"
	metaSuffix  = ".json"
	lockSuffix  = ".lock"
)

// maxNameLen keeps NAME plus the longest suffix and a temp-file decoration
// well inside the 255-byte file name limit of every filesystem we expect.
const maxNameLen = 128

// Errors callers can test for with errors.Is. The errors returned always
// wrap one of these with the disk name and storage directory.
var (
	ErrInvalidName = errors.New("invalid disk name")
	ErrExists      = errors.New("disk already exists")
	ErrNotFound    = errors.New("disk not found")
	ErrLocked      = errors.New("disk is in use")
	ErrReadOnly    = errors.New("disk is open read-only")
	ErrOutOfRange  = errors.New("access beyond the end of the disk")
	ErrClosed      = errors.New("disk is closed")
)

// EnvStorageDir names the environment variable that overrides DefaultDir.
const EnvStorageDir = "FTVM_STORAGE"

// DefaultDir is the storage directory used when none is given:
// $FTVM_STORAGE if set, else $XDG_DATA_HOME/ftvm/storage, else
// ~/.local/share/ftvm/storage. Disk images are data the user cares about
// (unlike the cache in $FTVM_CACHE), hence the XDG data directory. For a
// primary/backup pair on two hosts, point FTVM_STORAGE at a shared
// filesystem mounted at the same path on both.
func DefaultDir() (string, error) {
	if d := os.Getenv(EnvStorageDir); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "ftvm", "storage"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the default storage directory (set %s): %w", EnvStorageDir, err)
	}
	return filepath.Join(home, ".local", "share", "ftvm", "storage"), nil
}

// ValidateName checks a disk name: 1 to 128 bytes of letters, digits, '.',
// '_' and '-', starting with a letter or digit. That excludes path
// separators, "." and "..", and the hidden names used for temporary files,
// so a name can never reach outside the storage directory.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: %q is longer than %d bytes", ErrInvalidName, name, maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			if c == '/' || c == '\\' {
				return fmt.Errorf("%w: %q contains a path separator", ErrInvalidName, name)
			}
			return fmt.Errorf("%w: %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", ErrInvalidName, name)
		}
	}
	return nil
}

// Store is a storage directory holding disk images. It is safe for
// concurrent use. The directory may be shared between hosts; everything
// Store writes there is written atomically (temporary file, fsync, rename,
// fsync of the directory) so that a crash or a reader on another host never
// sees a half-written metadata file.
type Store struct {
	dir string
	log *slog.Logger

	mu sync.Mutex
	// open holds the disks open through this Store, so that a second open in
	// the same process fails with a clear message before touching the lock.
	open map[string]*Disk
}

// Open returns the storage directory dir, creating it (and its parents) if
// it does not exist yet.
func Open(dir string) (*Store, error) {
	return OpenWithLogger(dir, slog.Default())
}

// OpenWithLogger is Open with a logger for disk creation and lock events.
func OpenWithLogger(dir string, log *slog.Logger) (*Store, error) {
	if dir == "" {
		return nil, errors.New("storage: directory path is empty")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("storage: resolve %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("storage: create directory %s: %w", abs, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("storage: %s is not a directory", abs)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Store{dir: abs, log: log.With("storage", abs), open: map[string]*Disk{}}, nil
}

// Dir returns the storage directory's absolute path.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(name, suffix string) string { return filepath.Join(s.dir, name+suffix) }

// CreateOptions adjusts CreateDisk.
type CreateOptions struct {
	// Filesystem, if not FilesystemNone, is made inside the image with the
	// host's tools (mkfs.ext4, installed from e2fsprogs when missing).
	Filesystem Filesystem
	// Label is the filesystem label (ext4: at most 16 bytes); empty means
	// the disk name, truncated.
	Label string
	// Progress receives package installation output; nil discards it.
	Progress io.Writer
}

// CreateDisk makes a new disk: a sparse raw image of size bytes (a multiple
// of SizeAlign), optionally formatted, and its metadata. It refuses to
// replace an existing disk or a stray image file. On failure it removes
// what it made, so the name stays free.
//
// ctx bounds the mkfs run and any package installation.
func (s *Store) CreateDisk(ctx context.Context, name string, size int64, opts CreateOptions) (*Metadata, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("storage: create disk: %w", err)
	}
	if err := validateSize(size); err != nil {
		return nil, fmt.Errorf("storage: create disk %q: %w", name, err)
	}
	switch opts.Filesystem {
	case FilesystemNone, FilesystemExt4:
	default:
		return nil, fmt.Errorf("storage: create disk %q: unsupported filesystem %q (supported: ext4)", name, opts.Filesystem)
	}
	metaPath, imgPath := s.path(name, metaSuffix), s.path(name, imageSuffix)
	if _, err := os.Lstat(metaPath); err == nil {
		return nil, fmt.Errorf("storage: create disk %q in %s: %w", name, s.dir, ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("storage: create disk %q: %w", name, err)
	}
	id, err := newDiskID()
	if err != nil {
		return nil, fmt.Errorf("storage: create disk %q: %w", name, err)
	}
	m := &Metadata{
		FormatVersion: MetadataFormatVersion,
		Name:          name,
		Size:          size,
		Created:       time.Now().UTC().Truncate(time.Second),
		ID:            id,
		Filesystem:    opts.Filesystem,
	}
	meta, err := EncodeMetadata(m)
	if err != nil {
		return nil, fmt.Errorf("storage: create disk %q: %w", name, err)
	}

	// O_EXCL claims the name atomically (also on NFSv3+), so two creators
	// racing on one name cannot both succeed.
	f, err := os.OpenFile(imgPath, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("storage: create disk %q: %w: image file %s exists without metadata "+
				"(an interrupted create, or a file put there by hand); remove it to reuse the name", name, ErrExists, imgPath)
		}
		return nil, fmt.Errorf("storage: create disk %q: %w", name, err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(imgPath)
		}
	}()
	// Truncate, never write: the image stays sparse and costs no space
	// until the guest writes.
	if err := f.Truncate(size); err != nil {
		return nil, fmt.Errorf("storage: create disk %q: size image %s to %d bytes: %w", name, imgPath, size, err)
	}
	if opts.Filesystem == FilesystemExt4 {
		label := opts.Label
		if label == "" {
			label = name
		}
		if len(label) > 16 {
			label = label[:16]
		}
		if err := mkfsExt4(ctx, imgPath, label, opts.Progress); err != nil {
			return nil, fmt.Errorf("storage: create disk %q: %w", name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("storage: create disk %q: sync image %s: %w", name, imgPath, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("storage: create disk %q: close image %s: %w", name, imgPath, err)
	}
	// The metadata rename is the commit point; it also makes the image's
	// directory entry durable, since writeFileAtomic syncs the directory.
	if err := writeFileAtomic(metaPath, meta, true); err != nil {
		return nil, fmt.Errorf("storage: create disk %q: %w", name, err)
	}
	committed = true
	s.log.Debug("disk created", "disk", name, "size", size, "filesystem", string(opts.Filesystem), "id", id)
	return m, nil
}

// newDiskID returns "ftvm-" and 12 random hex digits (17 bytes): unique
// enough across a site's disks and within virtio-blk's 20-byte limit.
func newDiskID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate disk id: %w", err)
	}
	return "ftvm-" + hex.EncodeToString(b[:]), nil
}

// mkfsExt4 formats the image file at path with the host's mkfs.ext4.
func mkfsExt4(ctx context.Context, path, label string, progress io.Writer) error {
	if err := hostsetup.Ensure(ctx, progress, hostsetup.Requirement{Path: "mkfs.ext4", Package: "e2fsprogs"}); err != nil {
		return fmt.Errorf("mkfs.ext4 for %s: %w", path, err)
	}
	// -F: the target is a regular file, not a block device. The inode
	// tables are initialised lazily (the default), which keeps the image
	// sparse; the guest kernel finishes them in the background.
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-F", "-q", "-L", label, path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			return fmt.Errorf("mkfs.ext4 %s: %w", path, err)
		}
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", path, err, msg)
	}
	return nil
}

// writeFileAtomic replaces path with data so that readers see either the
// old or the new content: a temporary file in the same directory, fsynced,
// renamed over path, then the directory fsynced so the rename survives a
// crash. If exclusive, it fails with ErrExists instead of replacing.
func writeFileAtomic(path string, data []byte, exclusive bool) error {
	dir, base := filepath.Split(path)
	// The leading dot makes the temporary name an invalid disk name, so
	// ListDisks never mistakes it for a disk.
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmpPath := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpPath)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmpPath, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmpPath, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmpPath, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmpPath, err)
	}
	if exclusive {
		// link(2) fails if path exists, where rename would replace it.
		if err := os.Link(tmpPath, path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("write %s: %w", path, ErrExists)
			}
			return fmt.Errorf("write %s: %w", path, err)
		}
		os.Remove(tmpPath)
	} else if err := os.Rename(tmpPath, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// readMetadata reads and validates the metadata of disk name.
func (s *Store) readMetadata(name string) (*Metadata, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	path := s.path(name, metaSuffix)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("disk %q in %s: %w", name, s.dir, ErrNotFound)
		}
		return nil, fmt.Errorf("disk %q: %w", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMetadataBytes+1))
	if err != nil {
		return nil, fmt.Errorf("disk %q: read %s: %w", name, path, err)
	}
	m, err := DecodeMetadata(data)
	if err != nil {
		return nil, fmt.Errorf("disk %q: %s: %w", name, path, err)
	}
	if m.Name != name {
		return nil, fmt.Errorf("disk %q: %s names disk %q (file renamed by hand?)", name, path, m.Name)
	}
	return m, nil
}

// Metadata returns the validated metadata of disk name.
func (s *Store) Metadata(name string) (*Metadata, error) {
	m, err := s.readMetadata(name)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	return m, nil
}

// DiskInfo is what Inspect reports about a disk: its metadata and the state
// of its files.
type DiskInfo struct {
	Metadata
	// ImagePath is the image file, for operators (ftctl disk inspect).
	ImagePath string
	// Allocated is the space the image occupies on the host (st_blocks),
	// small for a fresh sparse image.
	Allocated int64
	// InUse reports that a VMM holds the disk's lock right now; Holder
	// describes it when known.
	InUse  bool
	Holder string
}

// Inspect reports on disk name without opening it for I/O. It checks that
// the image file matches the metadata.
func (s *Store) Inspect(name string) (*DiskInfo, error) {
	m, err := s.readMetadata(name)
	if err != nil {
		return nil, fmt.Errorf("storage: inspect: %w", err)
	}
	imgPath := s.path(name, imageSuffix)
	var st unix.Stat_t
	if err := unix.Stat(imgPath, &st); err != nil {
		return nil, fmt.Errorf("storage: inspect disk %q: image %s: %w", name, imgPath, err)
	}
	if st.Size != m.Size {
		return nil, fmt.Errorf("storage: inspect disk %q: image %s is %d bytes but its metadata says %d", name, imgPath, st.Size, m.Size)
	}
	info := &DiskInfo{Metadata: *m, ImagePath: imgPath, Allocated: st.Blocks * 512}
	info.InUse, info.Holder = probeLock(s.path(name, lockSuffix))
	return info, nil
}

// ListDisks returns the metadata of every disk in the directory, sorted by
// name. A disk whose metadata is unreadable or invalid is left out of the
// list and reported in the returned error (joined per disk), so one corrupt
// file does not hide the others.
func (s *Store) ListDisks() ([]*Metadata, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("storage: list %s: %w", s.dir, err)
	}
	var disks []*Metadata
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), metaSuffix)
		if !ok || ValidateName(name) != nil {
			continue
		}
		m, err := s.readMetadata(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("storage: %w", err))
			continue
		}
		disks = append(disks, m)
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].Name < disks[j].Name })
	return disks, errors.Join(errs...)
}
