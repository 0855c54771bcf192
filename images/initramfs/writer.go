package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// ErrWriteTooLong is returned when more data is written than the current
// entry's header announced.
var ErrWriteTooLong = errors.New("initramfs: write too long")

// Writer writes a newc archive. Use WriteHeader followed by Write for full
// control of every field (as with archive/tar), or the Add* methods, which
// create missing parent directories and produce reproducible entries.
// Close must be called to end the archive.
type Writer struct {
	w         io.Writer
	written   int64             // bytes written to w so far
	remaining int64             // data bytes the current entry still expects
	pad       int64             // NULs owed after the current entry's data
	nextIno   uint32            // next inode number for Add* entries
	modes     map[string]uint32 // stored names -> st_mode, to refuse duplicates and check parents
	trailer   bool              // the trailer entry has been written
	closed    bool
	err       error // sticky: after a failed write the archive is unusable
}

// NewWriter returns a Writer that writes an archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, nextIno: 1, modes: map[string]uint32{}}
}

func (w *Writer) out(p []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(p)
	w.written += int64(n)
	if err != nil {
		w.err = fmt.Errorf("initramfs: write archive at offset %d: %w", w.written, err)
		return w.err
	}
	return nil
}

var zeros [512]byte

// finishEntry checks that the previous entry's data is complete and writes its padding.
func (w *Writer) finishEntry() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("initramfs: writer is closed")
	}
	if w.remaining > 0 {
		return fmt.Errorf("initramfs: previous entry is missing %d bytes of data", w.remaining)
	}
	if w.pad > 0 {
		if err := w.out(zeros[:w.pad]); err != nil {
			return err
		}
		w.pad = 0
	}
	return nil
}

// WriteHeader writes h and prepares to accept h.Size bytes of data through
// Write. The fields are stored exactly as given (the inode number too), so a
// read archive can be rewritten unchanged. A header named TRAILER!!! ends the
// archive; Close then only pads it.
func (w *Writer) WriteHeader(h Header) error {
	if err := w.finishEntry(); err != nil {
		return err
	}
	if w.trailer {
		return fmt.Errorf("initramfs: entry %q after the trailer", h.Name)
	}
	if err := validName(h.Name); err != nil {
		return fmt.Errorf("initramfs: write entry: %w", err)
	}
	if h.Name != TrailerName {
		if _, dup := w.modes[h.Name]; dup {
			return fmt.Errorf("initramfs: duplicate entry %q", h.Name)
		}
	}
	buf := make([]byte, 0, headerLen+len(h.Name)+4)
	buf = append(buf, Magic...)
	for _, f := range h.fields() {
		buf = fmt.Appendf(buf, "%08X", f)
	}
	buf = append(buf, h.Name...)
	buf = append(buf, 0)
	buf = append(buf, zeros[:pad4(int64(len(buf)))]...)
	if err := w.out(buf); err != nil {
		return err
	}
	if h.Name == TrailerName {
		w.trailer = true
	} else {
		w.modes[h.Name] = h.Mode
	}
	w.remaining = int64(h.Size)
	w.pad = pad4(int64(h.Size))
	return nil
}

// Write writes data of the current entry.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if int64(len(p)) > w.remaining {
		n := int(w.remaining)
		if n > 0 {
			if err := w.out(p[:n]); err != nil {
				return 0, err
			}
			w.remaining = 0
		}
		return n, ErrWriteTooLong
	}
	if err := w.out(p); err != nil {
		return 0, err
	}
	w.remaining -= int64(len(p))
	return len(p), nil
}

// Offset returns the number of archive bytes written so far.
func (w *Writer) Offset() int64 { return w.written }

// Close writes the trailer (unless WriteHeader already wrote one) and pads
// the archive with NULs to a multiple of 512 bytes, as GNU cpio does. It
// does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if !w.trailer {
		if err := w.WriteHeader(Header{Name: TrailerName, NLink: 1}); err != nil {
			return err
		}
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	if rem := w.written % 512; rem != 0 {
		if err := w.out(zeros[:512-rem]); err != nil {
			return err
		}
	}
	w.closed = true
	return nil
}

// add writes one reproducible entry after creating its missing parents.
func (w *Writer) add(name string, mode uint32, rdevMajor, rdevMinor uint32, data io.Reader, size int64) error {
	clean, err := cleanName(name)
	if err != nil {
		return fmt.Errorf("initramfs: add entry: %w", err)
	}
	if size < 0 || size > int64(^uint32(0)) {
		return fmt.Errorf("initramfs: add %s: size %d does not fit a newc header", clean, size)
	}
	if err := w.mkdirParents(clean); err != nil {
		return err
	}
	nlink := uint32(1)
	if mode&ModeTypeMask == ModeDir {
		nlink = 2
	}
	h := Header{Name: clean, Mode: mode, NLink: nlink, Ino: w.nextIno,
		RDevMajor: rdevMajor, RDevMinor: rdevMinor, Size: uint32(size)}
	if err := w.WriteHeader(h); err != nil {
		return err
	}
	w.nextIno++
	if size == 0 {
		return nil
	}
	n, err := io.Copy(w, io.LimitReader(data, size))
	if err != nil {
		return fmt.Errorf("initramfs: add %s: %w", clean, err)
	}
	if n != size {
		return fmt.Errorf("initramfs: add %s: data ended after %d of %d bytes", clean, n, size)
	}
	return nil
}

// mkdirParents adds every missing parent directory of clean with mode 0755.
func (w *Writer) mkdirParents(clean string) error {
	dir := path.Dir(clean)
	if dir == "." {
		return nil
	}
	if mode, ok := w.modes[dir]; ok {
		if mode&ModeTypeMask != ModeDir {
			return fmt.Errorf("initramfs: add %s: parent %s is not a directory", clean, dir)
		}
		return nil
	}
	if err := w.mkdirParents(dir); err != nil {
		return err
	}
	h := Header{Name: dir, Mode: ModeDir | 0o755, NLink: 2, Ino: w.nextIno}
	if err := w.WriteHeader(h); err != nil {
		return err
	}
	w.nextIno++
	return nil
}

// AddDir adds a directory.
func (w *Writer) AddDir(name string, perm fs.FileMode) error {
	return w.add(name, ModeDir|permBits(perm), 0, 0, nil, 0)
}

// AddFile adds a regular file holding data.
func (w *Writer) AddFile(name string, perm fs.FileMode, data []byte) error {
	return w.add(name, ModeRegular|permBits(perm), 0, 0, bytes.NewReader(data), int64(len(data)))
}

// AddFileFrom adds a regular file of exactly size bytes read from r.
func (w *Writer) AddFileFrom(name string, perm fs.FileMode, r io.Reader, size int64) error {
	return w.add(name, ModeRegular|permBits(perm), 0, 0, r, size)
}

// AddHostFile adds the regular file at hostPath (symlinks followed) under
// name, keeping its permission bits; owner and time are normalized.
func (w *Writer) AddHostFile(name, hostPath string) error {
	f, err := os.Open(hostPath)
	if err != nil {
		return fmt.Errorf("initramfs: add %s: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("initramfs: add %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("initramfs: add %s: %s is not a regular file (%s)", name, hostPath, fi.Mode().Type())
	}
	return w.add(name, ModeRegular|permBits(fi.Mode()), 0, 0, f, fi.Size())
}

// AddSymlink adds a symbolic link to target.
func (w *Writer) AddSymlink(name, target string) error {
	if target == "" {
		return fmt.Errorf("initramfs: add symlink %s: empty target", name)
	}
	return w.add(name, ModeSymlink|0o777, 0, 0, strings.NewReader(target), int64(len(target)))
}

// AddCharDevice adds a character device node (e.g. dev/console, 5:1) so the
// kernel can open the console before devtmpfs is mounted.
func (w *Writer) AddCharDevice(name string, perm fs.FileMode, major, minor uint32) error {
	return w.add(name, ModeCharDevice|permBits(perm), major, minor, nil, 0)
}
