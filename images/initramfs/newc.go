// Package initramfs owns the "newc" cpio format (magic "070701") that the
// Linux kernel unpacks as its initial root filesystem: a writer that produces
// reproducible archives (inode numbers assigned in order, mtime 0, owner
// root) and a reader that checks untrusted archives strictly enough that
// whatever it accepts is rewritten byte for byte by the writer.
//
// Layout of one entry (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst):
//
//	"070701" + 13 fields of 8 hex digits (ino mode uid gid nlink mtime filesize
//	devmajor devminor rdevmajor rdevminor namesize check)   = 110 bytes
//	name, NUL terminated; header+name padded with NULs to a multiple of 4
//	data (filesize bytes), padded with NULs to a multiple of 4
//
// The archive ends with an entry named "TRAILER!!!". Compression is left to
// the caller (wrap the io.Writer in compress/gzip).
package initramfs

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// Magic is the newc header magic.
const Magic = "070701"

// TrailerName names the entry that ends an archive.
const TrailerName = "TRAILER!!!"

// headerLen is the fixed part of a header: magic plus 13 eight-digit fields.
const headerLen = 6 + 13*8

// MaxNameSize bounds a name including its NUL; it is Linux's PATH_MAX, which
// is also the largest name the kernel's unpacker accepts.
const MaxNameSize = 4096

// File type bits of Header.Mode (st_mode), as in <sys/stat.h>.
const (
	ModeTypeMask   = 0o170000
	ModeSocket     = 0o140000
	ModeSymlink    = 0o120000
	ModeRegular    = 0o100000
	ModeBlockDev   = 0o060000
	ModeDir        = 0o040000
	ModeCharDevice = 0o020000
	ModeFIFO       = 0o010000
	ModeSetuid     = 0o004000
	ModeSetgid     = 0o002000
	ModeSticky     = 0o001000
	ModePermMask   = 0o007777
)

// Header is one newc entry's header. Mode is the full st_mode including the
// file type bits; Size is the length of the data that follows.
type Header struct {
	Name                 string
	Mode                 uint32
	UID, GID             uint32
	NLink                uint32
	MTime                uint32
	Ino                  uint32
	DevMajor, DevMinor   uint32
	RDevMajor, RDevMinor uint32
	Check                uint32
	Size                 uint32
}

// IsDir reports whether h describes a directory.
func (h Header) IsDir() bool { return h.Mode&ModeTypeMask == ModeDir }

// FileMode converts Mode to an fs.FileMode.
func (h Header) FileMode() fs.FileMode {
	m := fs.FileMode(h.Mode & 0o777)
	if h.Mode&ModeSetuid != 0 {
		m |= fs.ModeSetuid
	}
	if h.Mode&ModeSetgid != 0 {
		m |= fs.ModeSetgid
	}
	if h.Mode&ModeSticky != 0 {
		m |= fs.ModeSticky
	}
	switch h.Mode & ModeTypeMask {
	case ModeDir:
		m |= fs.ModeDir
	case ModeSymlink:
		m |= fs.ModeSymlink
	case ModeCharDevice:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case ModeBlockDev:
		m |= fs.ModeDevice
	case ModeFIFO:
		m |= fs.ModeNamedPipe
	case ModeSocket:
		m |= fs.ModeSocket
	}
	return m
}

// permBits converts the permission part of an fs.FileMode to st_mode bits.
// Callers may also pass the st_mode spelling (0o1777 for a sticky /tmp).
func permBits(perm fs.FileMode) uint32 {
	m := uint32(perm) & ModePermMask
	if perm&fs.ModeSetuid != 0 {
		m |= ModeSetuid
	}
	if perm&fs.ModeSetgid != 0 {
		m |= ModeSetgid
	}
	if perm&fs.ModeSticky != 0 {
		m |= ModeSticky
	}
	return m
}

// fields lists the header's numeric fields in on-disk order, with namesize
// taken from the name.
func (h Header) fields() [13]uint32 {
	return [13]uint32{h.Ino, h.Mode, h.UID, h.GID, h.NLink, h.MTime, h.Size,
		h.DevMajor, h.DevMinor, h.RDevMajor, h.RDevMinor, uint32(len(h.Name) + 1), h.Check}
}

// pad4 returns how many NULs bring n to a multiple of 4.
func pad4(n int64) int64 { return (4 - n%4) % 4 }

// validName checks a stored name: relative, non-empty, no NUL, no ".."
// component (an archive must not write outside the directory it is
// unpacked into). The trailer name is valid.
func validName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name)+1 > MaxNameSize:
		return fmt.Errorf("name of %d bytes is longer than %d", len(name), MaxNameSize-1)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("name %q contains a NUL byte", name)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("name %q is absolute (names are stored without a leading /)", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return fmt.Errorf("name %q contains a \"..\" component", name)
		}
	}
	return nil
}

// cleanName turns a caller's path ("/lib/x", "lib//x/") into the stored form.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("name %q contains a \"..\" component", name)
		}
	}
	clean := strings.TrimLeft(path.Clean("/"+name), "/")
	if clean == "" {
		return "", fmt.Errorf("name %q names the archive root", name)
	}
	return clean, validName(clean)
}
