package raft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Persister keeps a peer's Raft state and the service's latest snapshot.
// Save replaces both at once: after it returns they are durable, and a
// crash at any point leaves either the old pair or the new one.
type Persister interface {
	Save(state, snapshot []byte) error
	// Load returns what the last Save stored (both nil if nothing was).
	Load() (state, snapshot []byte, err error)
	// Size is the number of bytes of state the last Save stored; services
	// compare it with their snapshot threshold.
	Size() int
}

// MemoryPersister is a Persister for tests: a crash is simulated by
// stopping the peer and starting a new one on the same MemoryPersister.
type MemoryPersister struct {
	mu       sync.Mutex
	state    []byte
	snapshot []byte
	saves    int
}

func NewMemoryPersister() *MemoryPersister { return &MemoryPersister{} }

func (p *MemoryPersister) Save(state, snapshot []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = bytes.Clone(state)
	p.snapshot = bytes.Clone(snapshot)
	p.saves++
	return nil
}

func (p *MemoryPersister) Load() (state, snapshot []byte, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.state), bytes.Clone(p.snapshot), nil
}

func (p *MemoryPersister) Size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.state)
}

// SnapshotSize is the size of the stored snapshot.
func (p *MemoryPersister) SnapshotSize() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.snapshot)
}

// FilePersister keeps state and snapshot in one file, dir/raft.state,
// rewritten whole on every Save: written to a temporary file, fsync'd,
// renamed over the old one, and the directory fsync'd. Rewriting is
// O(state + snapshot) per Save; services keep both small by snapshotting
// at a threshold, and one file makes the pair atomic without a journal.
//
// File format (integers little endian):
//
//	magic     8 bytes  "FTRAFT1\n"
//	statelen  uint32
//	snaplen   uint32
//	state     statelen bytes
//	snapshot  snaplen bytes
//	crc       uint32   CRC-32C (Castagnoli) of everything before it
//
// Rename makes a torn file impossible short of corruption, so a file that
// fails to decode is an error, never silently dropped.
type FilePersister struct {
	mu   sync.Mutex
	dir  string
	size int
}

const (
	stateFile     = "raft.state"
	stateFileTemp = "raft.state.tmp"
	fileMagic     = "FTRAFT1\n"
	fileHeader    = len(fileMagic) + 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// OpenFilePersister opens (creating if needed) the persister in dir.
func OpenFilePersister(dir string) (*FilePersister, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open raft persister: %w", err)
	}
	// A leftover temporary file is a Save that never reached its rename.
	if err := os.Remove(filepath.Join(dir, stateFileTemp)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open raft persister: %w", err)
	}
	p := &FilePersister{dir: dir}
	state, _, err := p.Load()
	if err != nil {
		return nil, err
	}
	p.size = len(state)
	return p, nil
}

func (p *FilePersister) Save(state, snapshot []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := encodeStateFile(state, snapshot)
	tmp := filepath.Join(p.dir, stateFileTemp)
	if err := writeSynced(tmp, b); err != nil {
		return fmt.Errorf("save raft state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, stateFile)); err != nil {
		return fmt.Errorf("save raft state: %w", err)
	}
	if err := syncDir(p.dir); err != nil {
		return fmt.Errorf("save raft state: %w", err)
	}
	p.size = len(state)
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (p *FilePersister) Load() (state, snapshot []byte, err error) {
	b, err := os.ReadFile(filepath.Join(p.dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load raft state: %w", err)
	}
	state, snapshot, err = decodeStateFile(b)
	if err != nil {
		return nil, nil, fmt.Errorf("load raft state from %s: %w", p.dir, err)
	}
	return state, snapshot, nil
}

func (p *FilePersister) Size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size
}

func encodeStateFile(state, snapshot []byte) []byte {
	b := make([]byte, 0, fileHeader+len(state)+len(snapshot)+4)
	b = append(b, fileMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(state)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(snapshot)))
	b = append(b, state...)
	b = append(b, snapshot...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decodeStateFile checks and splits a state file. The results alias b.
func decodeStateFile(b []byte) (state, snapshot []byte, err error) {
	if len(b) < fileHeader+4 {
		return nil, nil, fmt.Errorf("%w: state file of %d bytes", ErrMalformed, len(b))
	}
	if string(b[:len(fileMagic)]) != fileMagic {
		return nil, nil, fmt.Errorf("%w: state file magic %q", ErrMalformed, b[:len(fileMagic)])
	}
	sl := uint64(binary.LittleEndian.Uint32(b[len(fileMagic):]))
	nl := uint64(binary.LittleEndian.Uint32(b[len(fileMagic)+4:]))
	if want := uint64(fileHeader) + sl + nl + 4; want != uint64(len(b)) {
		return nil, nil, fmt.Errorf("%w: state file of %d bytes, header says %d", ErrMalformed, len(b), want)
	}
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[len(b)-4:]); got != want {
		return nil, nil, fmt.Errorf("%w: state file checksum %08x, file says %08x", ErrMalformed, got, want)
	}
	end := fileHeader + int(sl)
	state = body[fileHeader:end:end]
	snapshot = body[end:]
	return state, snapshot, nil
}

// persistentState is Figure 2's persistent state plus the snapshot's
// boundary (Figure 13): the log holds the entries after SnapshotIndex.
type persistentState struct {
	Term          uint64
	VotedFor      int // -1: none
	SnapshotIndex int
	SnapshotTerm  uint64
	Entries       []Entry
}

func (s *persistentState) encode() []byte {
	b := []byte{stateVersion}
	b = appendUvarint(b, s.Term)
	b = appendInt(b, s.VotedFor)
	b = appendInt(b, s.SnapshotIndex)
	b = appendUvarint(b, s.SnapshotTerm)
	return appendEntries(b, s.Entries)
}

const stateVersion = 1

// decodePersistentState decodes what encode wrote. Commands alias b.
func decodePersistentState(b []byte) (persistentState, error) {
	var s persistentState
	if len(b) > MaxMessage {
		return s, fmt.Errorf("%w: state of %d bytes", ErrMalformed, len(b))
	}
	d := decoder{b: b}
	if v := d.byte("version"); d.err == nil && v != stateVersion {
		d.fail("state version %d, want %d", v, stateVersion)
	}
	s.Term = d.uvarint("term")
	s.VotedFor = d.int("voted for", -1)
	s.SnapshotIndex = d.int("snapshot index", 0)
	s.SnapshotTerm = d.uvarint("snapshot term")
	s.Entries = d.entries()
	if err := d.done(); err != nil {
		return persistentState{}, fmt.Errorf("decode raft state: %w", err)
	}
	return s, nil
}
