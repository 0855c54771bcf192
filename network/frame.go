package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// MinFrameSize is the smallest frame accepted on a frame stream: an
	// Ethernet header. The switch indexes the header of every frame it
	// receives, so anything shorter is a protocol error, not a frame.
	MinFrameSize = 14
	// MaxFrameSize bounds a frame on a frame stream (a 64 KiB IP packet plus
	// an Ethernet header with a VLAN tag). The bound keeps a corrupt or
	// hostile length prefix from making the reader allocate gigabytes.
	MaxFrameSize = 65550
	// frameHeaderSize is the length prefix of the QEMU stream protocol.
	frameHeaderSize = 4
)

var (
	// ErrFrameTooLarge reports a length prefix above MaxFrameSize.
	ErrFrameTooLarge = errors.New("frame larger than the maximum")
	// ErrFrameTooShort reports a length prefix below MinFrameSize.
	ErrFrameTooShort = errors.New("frame shorter than an Ethernet header")
)

// FrameReader decodes a frame stream: each frame is a 4-byte big-endian
// length followed by that many bytes of Ethernet frame.
type FrameReader struct {
	r   io.Reader
	hdr [frameHeaderSize]byte
}

// NewFrameReader returns a FrameReader reading from r. Callers that read a
// socket should pass a buffered reader: Next does two reads per frame.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: r}
}

// Next returns the next frame in a newly allocated slice the caller owns. It
// returns io.EOF only when the stream ends cleanly between frames; a stream
// that ends inside a frame yields an error wrapping io.ErrUnexpectedEOF, and a
// length outside [MinFrameSize, MaxFrameSize] yields ErrFrameTooShort or
// ErrFrameTooLarge. After an error the stream is out of sync and must be
// dropped.
func (fr *FrameReader) Next() ([]byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("read frame length: %w", err)
	}
	n := binary.BigEndian.Uint32(fr.hdr[:])
	switch {
	case n > MaxFrameSize:
		return nil, fmt.Errorf("frame length %d: %w (%d)", n, ErrFrameTooLarge, MaxFrameSize)
	case n < MinFrameSize:
		return nil, fmt.Errorf("frame length %d: %w (%d bytes)", n, ErrFrameTooShort, MinFrameSize)
	}
	frame := make([]byte, n)
	if _, err := io.ReadFull(fr.r, frame); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read %d-byte frame: %w", n, err)
	}
	return frame, nil
}

// AppendFrame appends frame to dst in the frame-stream encoding.
func AppendFrame(dst, frame []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(frame)))
	return append(dst, frame...)
}

// checkFrame is the sender-side twin of the reader's bounds: a frame the
// other end would reject (and the switch would choke on) is refused before it
// is queued.
func checkFrame(frame []byte) error {
	switch {
	case len(frame) > MaxFrameSize:
		return fmt.Errorf("send %d-byte frame: %w (%d)", len(frame), ErrFrameTooLarge, MaxFrameSize)
	case len(frame) < MinFrameSize:
		return fmt.Errorf("send %d-byte frame: %w (%d bytes)", len(frame), ErrFrameTooShort, MinFrameSize)
	}
	return nil
}
