package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Disk is an open disk image. ReadAt, WriteAt, Flush, Size and ID make it a
// virtio-blk backend. It is safe for concurrent use; Close waits for I/O in
// progress.
type Disk struct {
	store    *Store
	name     string
	meta     Metadata
	readOnly bool

	// mu is held for reading by every I/O and for writing by Close, so a
	// request never runs against a closed (and perhaps reused) descriptor.
	mu     sync.RWMutex
	closed bool
	img    *os.File
	lock   *os.File
}

// OpenDisk opens disk name for reading and writing. It takes the disk's
// lock exclusively: a second open, in this process or in another process
// on any host that honours the lock, fails with ErrLocked naming the holder.
func (s *Store) OpenDisk(name string) (*Disk, error) {
	return s.openDisk(name, false)
}

// OpenDiskReadOnly opens disk name for reading only. It takes the lock
// shared: any number of readers, but not together with a writer.
func (s *Store) OpenDiskReadOnly(name string) (*Disk, error) {
	return s.openDisk(name, true)
}

func (s *Store) openDisk(name string, readOnly bool) (_ *Disk, err error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("storage: open disk: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, busy := s.open[name]; busy {
		return nil, fmt.Errorf("storage: open disk %q in %s: %w: already open in this process (pid %d)", name, s.dir, ErrLocked, os.Getpid())
	}
	m, err := s.readMetadata(name)
	if err != nil {
		return nil, fmt.Errorf("storage: open %w", err)
	}

	lockPath := s.path(name, lockSuffix)
	lock, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("storage: open disk %q: lock file: %w", name, err)
	}
	defer func() {
		if err != nil {
			lock.Close() // also drops the flock, if taken
		}
	}()
	how := unix.LOCK_EX
	if readOnly {
		how = unix.LOCK_SH
	}
	if err := takeLock(lock, how); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("storage: open disk %q in %s: %w: locked by %s", name, s.dir, ErrLocked, readHolder(lock))
		}
		return nil, fmt.Errorf("storage: open disk %q: lock %s: %w", name, lockPath, err)
	}
	if !readOnly {
		// Only an exclusive holder records itself; shared readers would
		// overwrite each other. Failing to record is not fatal: the lock
		// itself is what protects the disk.
		if err := writeHolder(lock); err != nil {
			s.log.Warn("could not record the disk lock holder", "disk", name, "err", err)
		}
	}

	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	imgPath := s.path(name, imageSuffix)
	img, err := os.OpenFile(imgPath, flags|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("storage: open disk %q: image: %w", name, err)
	}
	fi, err := img.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", imgPath)
	} else if err == nil && fi.Size() != m.Size {
		err = fmt.Errorf("image %s is %d bytes but its metadata says %d (truncated or resized by hand?)", imgPath, fi.Size(), m.Size)
	}
	if err != nil {
		img.Close()
		return nil, fmt.Errorf("storage: open disk %q: %w", name, err)
	}
	d := &Disk{store: s, name: name, meta: *m, readOnly: readOnly, img: img, lock: lock}
	s.open[name] = d
	s.log.Debug("disk opened", "disk", name, "read_only", readOnly, "generation", m.Generation)
	return d, nil
}

// takeLock takes an flock without blocking. A few retries over ~50ms let
// a momentary probe (Inspect holds a shared lock for microseconds) pass
// without turning into a spurious "in use" error.
func takeLock(f *os.File, how int) error {
	var err error
	for attempt := 0; attempt < 6; attempt++ {
		if attempt > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		err = flock(f, how|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
	}
	return err
}

func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// lockHolder is what an exclusive holder writes into the lock file, for
// the error message of whoever finds the disk locked.
type lockHolder struct {
	PID   int       `json:"pid"`
	Host  string    `json:"host"`
	Since time.Time `json:"since"`
}

func writeHolder(f *os.File) error {
	host, _ := os.Hostname()
	b, err := json.Marshal(lockHolder{PID: os.Getpid(), Host: host, Since: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err = f.WriteAt(append(b, '\n'), 0)
	return err
}

// readHolder describes the process holding a lock, from what it wrote.
func readHolder(f *os.File) string {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 4096))
	if err != nil || len(b) == 0 {
		return "another process (holder unknown; readers do not record themselves)"
	}
	var h lockHolder
	if err := json.Unmarshal(b, &h); err != nil || h.PID <= 0 {
		return "another process (holder record unreadable)"
	}
	return fmt.Sprintf("pid %d on host %s since %s", h.PID, h.Host, h.Since.Format(time.RFC3339))
}

// probeLock reports whether someone holds the lock at path, without
// keeping any lock itself.
func probeLock(path string) (inUse bool, holder string) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false, "" // never opened: no lock file yet
	}
	defer f.Close()
	err = flock(f, unix.LOCK_SH|unix.LOCK_NB)
	if err == nil {
		// Free, or held shared by readers only (which also lets us in).
		// Closing f releases our probe.
		return false, ""
	}
	return true, readHolder(f)
}

// Name returns the disk's name.
func (d *Disk) Name() string { return d.name }

// Size returns the disk size in bytes.
func (d *Disk) Size() int64 { return d.meta.Size }

// ID returns the disk's stable identifier (at most MaxIDLen bytes), which
// virtio-blk reports to the guest for GET_ID.
func (d *Disk) ID() string { return d.meta.ID }

// ReadOnly reports whether the disk was opened read-only.
func (d *Disk) ReadOnly() bool { return d.readOnly }

// Generation returns the fencing generation recorded when the disk was
// opened.
func (d *Disk) Generation() uint64 { return d.meta.Generation }

// Metadata returns a copy of the disk's metadata as of opening.
func (d *Disk) Metadata() Metadata { return d.meta }

func (d *Disk) checkRange(op string, n int, off int64) error {
	if off < 0 || int64(n) > d.meta.Size || off > d.meta.Size-int64(n) {
		return fmt.Errorf("storage: disk %q: %s of %d bytes at offset %d: %w (size %d)", d.name, op, n, off, ErrOutOfRange, d.meta.Size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off. The whole range must lie inside the
// disk; a short read is an error (the image file shrank under us).
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.checkRange("read", len(p), off); err != nil {
		return 0, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, fmt.Errorf("storage: read disk %q: %w", d.name, ErrClosed)
	}
	n, err := d.img.ReadAt(p, off)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, fmt.Errorf("storage: read disk %q at offset %d: %w", d.name, off, err)
	}
	return n, nil
}

// WriteAt writes p at off. The whole range must lie inside the disk.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if err := d.checkRange("write", len(p), off); err != nil {
		return 0, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.admitWrite(); err != nil {
		return 0, err
	}
	n, err := d.img.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("storage: write disk %q at offset %d: %w", d.name, off, err)
	}
	return n, nil
}

// admitWrite is the single gate every write passes (with d.mu held): it
// refuses writes to a closed or read-only disk. Generations are not checked
// here: a Disk opened directly is not fenced. Fencing is the storage
// server's (package storage/server), which opens the disk itself and
// checks each write's generation against the pair's record.
func (d *Disk) admitWrite() error {
	if d.closed {
		return fmt.Errorf("storage: write disk %q: %w", d.name, ErrClosed)
	}
	if d.readOnly {
		return fmt.Errorf("storage: write disk %q: %w", d.name, ErrReadOnly)
	}
	return nil
}

// Flush makes every completed write durable (fdatasync): virtio-blk's
// FLUSH, the guest's barrier before it acknowledges an fsync.
func (d *Disk) Flush() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return fmt.Errorf("storage: flush disk %q: %w", d.name, ErrClosed)
	}
	if d.readOnly {
		return nil // nothing of ours to make durable
	}
	rc, err := d.img.SyscallConn()
	if err != nil {
		return fmt.Errorf("storage: flush disk %q: %w", d.name, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return fmt.Errorf("storage: flush disk %q: %w", d.name, err)
	}
	if serr != nil {
		return fmt.Errorf("storage: flush disk %q: fdatasync: %w", d.name, serr)
	}
	return nil
}

// Close flushes nothing (the guest's flushes define durability), releases
// the lock and forgets the disk. It is idempotent.
func (d *Disk) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	var errs []error
	if err := d.img.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close image: %w", err))
	}
	if !d.readOnly {
		// Clear the holder record so a later reader of the file does not
		// blame a process that has let go.
		_ = d.lock.Truncate(0)
	}
	if err := d.lock.Close(); err != nil { // releases the flock
		errs = append(errs, fmt.Errorf("close lock: %w", err))
	}
	d.mu.Unlock()

	d.store.mu.Lock()
	if d.store.open[d.name] == d {
		delete(d.store.open, d.name)
	}
	d.store.mu.Unlock()
	d.store.log.Debug("disk closed", "disk", d.name)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storage: close disk %q: %w", d.name, err)
	}
	return nil
}
