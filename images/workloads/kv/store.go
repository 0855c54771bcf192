package kv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// Store is the key-value state: a map rebuilt from the log at Open, and
// the log itself, appended to and fsync'd on every Put. A Store made by
// OpenMemory has no log; it serves the same protocol for guests without a
// disk, but nothing survives the process.
type Store struct {
	mu   sync.Mutex
	f    *os.File // nil for a memory store
	path string
	data map[string][]byte
	seq  uint64
	size int64 // bytes of valid records in the log
	// failed is set when a failed append could not be undone: the log's
	// tail is then unknown, so further appends would risk writing after
	// garbage that replay would treat as corruption.
	failed error
}

// Recovery tells what Open found in an existing log.
type Recovery struct {
	Records int
	// TornBytes is how many bytes of an incomplete last record Open
	// truncated (0 if the log ended cleanly).
	TornBytes int64
	// TornReason says why the tail was judged torn.
	TornReason string
}

// Stats is a snapshot of the store for STATS and logs.
type Stats struct {
	Keys     int
	Seq      uint64
	LogBytes int64
	Durable  bool
}

// OpenMemory returns a store without a log.
func OpenMemory() *Store {
	return &Store{data: map[string][]byte{}}
}

// Open opens or creates the log at path, replays it, truncates a torn last
// record, and returns a store ready for appends.
func Open(path string) (*Store, Recovery, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, Recovery{}, fmt.Errorf("open kv log: %w", err)
	}
	s := &Store{f: f, path: path, data: map[string][]byte{}}
	rec, err := s.recover()
	if err == nil {
		// The file's directory entry must be durable too, or a crash
		// right after creating the log could lose acknowledged records
		// together with the file.
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		f.Close()
		return nil, rec, fmt.Errorf("open kv log %s: %w", path, err)
	}
	return s, rec, nil
}

// recover replays the log into s and cuts a torn tail.
func (s *Store) recover() (Recovery, error) {
	fi, err := s.f.Stat()
	if err != nil {
		return Recovery{}, err
	}
	var rec Recovery
	good, reason, err := replay(bufio.NewReaderSize(s.f, 1<<16), fi.Size(), func(r Record) error {
		if r.Seq != s.seq+1 {
			return fmt.Errorf("%w: record %d has seq %d, want %d", ErrCorrupt, rec.Records+1, r.Seq, s.seq+1)
		}
		s.seq = r.Seq
		s.data[string(r.Key)] = bytes.Clone(r.Value)
		rec.Records++
		return nil
	})
	if err != nil {
		return rec, err
	}
	s.size = good
	if good < fi.Size() {
		rec.TornBytes, rec.TornReason = fi.Size()-good, reason
		if err := s.f.Truncate(good); err != nil {
			return rec, fmt.Errorf("truncate torn record at offset %d: %w", good, err)
		}
		if err := s.f.Sync(); err != nil {
			return rec, fmt.Errorf("sync after truncating torn record: %w", err)
		}
	}
	if _, err := s.f.Seek(good, io.SeekStart); err != nil {
		return rec, err
	}
	return rec, nil
}

// replay reads records from r (a log of size bytes) and applies them. It
// returns the offset after the last valid record; if that is short of size
// the tail is torn and reason says why. Damage that is not at the tail is
// an error wrapping ErrCorrupt.
func replay(r io.Reader, size int64, apply func(Record) error) (good int64, reason string, err error) {
	var hdr [headerSize]byte
	var buf []byte
	for good < size {
		left := size - good
		if left < headerSize {
			return good, fmt.Sprintf("%d bytes, less than a record header", left), nil
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return good, "", fmt.Errorf("read record header at offset %d: %w", good, err)
		}
		_, n, derr := DecodeRecord(hdr[:])
		if errors.Is(derr, ErrCorrupt) {
			// A bad length: a torn tail only if everything from here on is
			// zeros (a filesystem may extend a file before the data lands).
			zero, err := restIsZero(hdr[:], r)
			if err != nil {
				return good, "", fmt.Errorf("read log tail at offset %d: %w", good, err)
			}
			if zero {
				return good, fmt.Sprintf("%d zero bytes", left), nil
			}
			return good, "", fmt.Errorf("at offset %d of %d: %w", good, size, derr)
		}
		if int64(n) > left {
			return good, fmt.Sprintf("record of %d bytes with only %d in the file", n, left), nil
		}
		buf = append(buf[:0], hdr[:]...)
		buf = append(buf, make([]byte, n-headerSize)...)
		if _, err := io.ReadFull(r, buf[headerSize:]); err != nil {
			return good, "", fmt.Errorf("read record at offset %d: %w", good, err)
		}
		rec, _, derr := DecodeRecord(buf)
		if derr != nil {
			// Only one record is ever unacknowledged (Put holds the lock
			// through write and fsync), so a damaged record is a torn
			// write if nothing but zeros follows it.
			zero, err := restIsZero(nil, r)
			if err != nil {
				return good, "", fmt.Errorf("read log tail at offset %d: %w", good, err)
			}
			if zero {
				return good, fmt.Sprintf("last record: %v", derr), nil
			}
			return good, "", fmt.Errorf("at offset %d of %d (not the last record): %w", good, size, derr)
		}
		if err := apply(rec); err != nil {
			return good, "", fmt.Errorf("at offset %d: %w", good, err)
		}
		good += int64(n)
	}
	return good, "", nil
}

func restIsZero(head []byte, r io.Reader) (bool, error) {
	if !allZero(head) {
		return false, nil
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if !allZero(buf[:n]) {
			return false, nil
		}
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// Put stores value under key and returns the record's sequence number.
// With a log, it returns only after the record is written and fsync'd:
// an acknowledged Put survives a crash.
func (s *Store) Put(key, value []byte) (uint64, error) {
	if len(key) == 0 {
		return 0, errors.New("empty key")
	}
	r := Record{Seq: 0, Key: key, Value: value}
	if sz := r.EncodedSize() - headerSize; sz > MaxPayload {
		return 0, fmt.Errorf("record of %d bytes exceeds the limit of %d", sz, MaxPayload)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return 0, s.failed
	}
	r.Seq = s.seq + 1
	if s.f != nil {
		if err := s.append(AppendRecord(nil, r)); err != nil {
			return 0, err
		}
	}
	s.seq = r.Seq
	s.data[string(key)] = bytes.Clone(value)
	return r.Seq, nil
}

// append writes and syncs one encoded record; on failure it cuts the log
// back to its last good size so a partial record never precedes the next.
func (s *Store) append(b []byte) error {
	_, err := s.f.WriteAt(b, s.size)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		err = fmt.Errorf("append to %s: %w", s.path, err)
		if terr := s.f.Truncate(s.size); terr != nil {
			s.failed = fmt.Errorf("%w; truncating back to %d bytes failed too (%v): store is read-only", err, s.size, terr)
			return s.failed
		}
		return err
	}
	s.size += int64(len(b))
	return nil
}

// Get returns the value stored under key.
func (s *Store) Get(key []byte) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[string(key)]
	return v, ok
}

// Stats returns a snapshot of the store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Keys: len(s.data), Seq: s.seq, LogBytes: s.size, Durable: s.f != nil}
}

// Path is the log's path, "" for a memory store.
func (s *Store) Path() string { return s.path }

// Close closes the log. Every acknowledged record is already synced.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	s.failed = errors.New("store closed")
	return err
}
