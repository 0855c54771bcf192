package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// MetadataFormatVersion is the version of the metadata file layout this code
// writes and the only one it reads. A later layout bumps it, so an old VMM
// refuses a disk it would misunderstand instead of guessing.
const MetadataFormatVersion = 1

// MaxIDLen is the longest disk ID: virtio-blk's GET_ID answers with at most
// 20 bytes (VIRTIO_BLK_ID_BYTES), and the guest shows it as the disk serial.
const MaxIDLen = 20

// SizeAlign is the granularity of disk sizes. 4096 covers both a 512-byte
// sector count (virtio-blk's capacity unit) and a 4096-byte logical block
// size, so no disk ever has a partial block at its end.
const SizeAlign = 4096

// MaxSize bounds disk sizes far above anything real (1 PiB) but low enough
// that offset arithmetic (offset + length, sector * 512) never overflows.
const MaxSize = int64(1) << 50

// maxMetadataBytes bounds what DecodeMetadata reads: the real file is a few
// hundred bytes, and a corrupt or hostile one must not make us allocate.
const maxMetadataBytes = 64 << 10

// Filesystem names what CreateDisk put inside an image.
type Filesystem string

const (
	// FilesystemNone is a raw image of zeros.
	FilesystemNone Filesystem = ""
	// FilesystemExt4 is an image formatted by the host's mkfs.ext4.
	FilesystemExt4 Filesystem = "ext4"
)

// Metadata is the JSON file kept beside each disk image. It is the commit
// point of CreateDisk: a disk exists exactly when its metadata file does.
type Metadata struct {
	FormatVersion int `json:"format_version"`
	// Name is the disk's name, equal to the file names' stem.
	Name string `json:"name"`
	// Size is the image size in bytes, a multiple of SizeAlign.
	Size int64 `json:"size"`
	// Created is when CreateDisk made the disk (UTC).
	Created time.Time `json:"created"`
	// Generation is the fencing generation: the split-brain arbiter bumps
	// it when a VMM takes over the disk, and storage will reject writes
	// from a writer holding an older one. Zero means never taken over.
	Generation uint64 `json:"generation"`
	// ID is the stable device identifier the guest reads with GET_ID: at
	// most MaxIDLen printable ASCII bytes. It is chosen at creation so the
	// primary and backup (and every later restart) present the same ID.
	ID string `json:"id"`
	// Filesystem is what CreateDisk formatted the image with, if anything.
	Filesystem Filesystem `json:"filesystem,omitempty"`
}

// Validate checks every field; DecodeMetadata calls it, and CreateDisk calls
// it before writing so a bad file is never produced.
func (m *Metadata) Validate() error {
	if m.FormatVersion != MetadataFormatVersion {
		if m.FormatVersion > MetadataFormatVersion {
			return fmt.Errorf("format_version %d is newer than this ftvm understands (%d)", m.FormatVersion, MetadataFormatVersion)
		}
		return fmt.Errorf("format_version %d is not supported (want %d)", m.FormatVersion, MetadataFormatVersion)
	}
	if err := ValidateName(m.Name); err != nil {
		return err
	}
	if err := validateSize(m.Size); err != nil {
		return err
	}
	if m.Created.IsZero() {
		return errors.New("created time is missing")
	}
	if err := validateID(m.ID); err != nil {
		return err
	}
	switch m.Filesystem {
	case FilesystemNone, FilesystemExt4:
	default:
		return fmt.Errorf("unknown filesystem %q", m.Filesystem)
	}
	return nil
}

func validateSize(size int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("size %d must be positive", size)
	case size > MaxSize:
		return fmt.Errorf("size %d exceeds the maximum of %s", size, FormatSize(MaxSize))
	case size%SizeAlign != 0:
		return fmt.Errorf("size %d is not a multiple of %d bytes", size, SizeAlign)
	}
	return nil
}

func validateID(id string) error {
	if id == "" {
		return errors.New("id is empty")
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("id %q is longer than %d bytes", id, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		// The guest prints the serial in sysfs and udev builds
		// /dev/disk/by-id names from it: keep it to visible ASCII.
		if c := id[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("id %q has a byte 0x%02x outside printable ASCII", id, c)
		}
	}
	return nil
}

// EncodeMetadata returns the file form of m (indented JSON with a trailing
// newline, so an operator can read it), after validating it.
func EncodeMetadata(m *Metadata) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("invalid disk metadata: %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode disk metadata for %q: %w", m.Name, err)
	}
	return append(b, '\n'), nil
}

// DecodeMetadata parses and validates a metadata file. It rejects unknown
// fields and trailing data: the file is ours, so anything unexpected means
// corruption or a newer writer, and guessing could attach the wrong disk
// size to a guest.
func DecodeMetadata(data []byte) (*Metadata, error) {
	if len(data) > maxMetadataBytes {
		return nil, fmt.Errorf("metadata is %d bytes, more than the %d allowed", len(data), maxMetadataBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Metadata
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parse metadata: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("parse metadata: trailing data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("invalid metadata: %w", err)
	}
	return &m, nil
}
