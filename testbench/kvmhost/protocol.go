package kvmhost

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
)

// The control channel is a serial line, so every message is a frame that
// can be recognised and checked on its own:
//
//	'F' 'T' | type (1 byte) | payload length (4 bytes, big endian) | payload | CRC-32C of type+length+payload (4 bytes)
//
// Payloads are JSON. A serial line has no message boundaries and may carry
// stray bytes (a kernel message printed to the wrong port, a half frame from
// an agent that died), so the reader resynchronises on the magic instead of
// giving up at the first bad byte.

const (
	frameMagic0 = 'F'
	frameMagic1 = 'T'
	// maxPayload bounds what a reader will allocate for one frame.
	maxPayload = 4 << 20
	headerLen  = 7
)

type frameType byte

const (
	frameHello    frameType = 1 // agent -> host: the agent is up
	frameExec     frameType = 2 // host -> agent: start a command
	frameOutput   frameType = 3 // agent -> host: stdout/stderr bytes of a command
	frameExit     frameType = 4 // agent -> host: a command ended
	frameShutdown frameType = 5 // host -> agent: power the host off
)

func (t frameType) String() string {
	switch t {
	case frameHello:
		return "hello"
	case frameExec:
		return "exec"
	case frameOutput:
		return "output"
	case frameExit:
		return "exit"
	case frameShutdown:
		return "shutdown"
	}
	return fmt.Sprintf("frame(%d)", byte(t))
}

type helloMsg struct {
	Kernel string `json:"kernel"`
	// KVM reports whether /dev/kvm opened inside the host.
	KVM      bool   `json:"kvm"`
	KVMError string `json:"kvm_error,omitempty"`
}

type execMsg struct {
	ID        uint64   `json:"id"`
	Argv      []string `json:"argv"`
	Env       []string `json:"env,omitempty"`
	Dir       string   `json:"dir,omitempty"`
	TimeoutMS int64    `json:"timeout_ms"`
}

type outputMsg struct {
	ID     uint64 `json:"id"`
	Stream int    `json:"stream"` // 1 stdout, 2 stderr
	Data   []byte `json:"data"`
}

type exitMsg struct {
	ID       uint64 `json:"id"`
	Code     int    `json:"code"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Err is set when the command could not be started at all.
	Err        string `json:"err,omitempty"`
	DurationNS int64  `json:"duration_ns"`
}

var crcTable = crc32.MakeTable(crc32.Castagnoli) //nolint:gochecknoglobals // immutable after init

// frameWriter serialises frames from several goroutines onto one line.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *frameWriter) send(t frameType, msg any) error {
	payload, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode %v frame: %w", t, err)
	}
	return fw.sendRaw(t, payload)
}

func (fw *frameWriter) sendRaw(t frameType, payload []byte) error {
	if len(payload) > maxPayload {
		return fmt.Errorf("%v frame of %d bytes exceeds the %d byte limit", t, len(payload), maxPayload)
	}
	buf := make([]byte, 0, headerLen+len(payload)+4)
	buf = append(buf, frameMagic0, frameMagic1, byte(t))
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(payload)))
	buf = append(buf, payload...)
	buf = binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf[2:], crcTable))
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if _, err := fw.w.Write(buf); err != nil {
		return fmt.Errorf("write %v frame: %w", t, err)
	}
	return nil
}

// frameReader reads frames, skipping bytes that are not part of a valid
// frame. Skipped counts them, for diagnostics.
type frameReader struct {
	r       *bufio.Reader
	skipped int64
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 64<<10)}
}

var errFrameCorrupt = errors.New("corrupt frame")

// next returns the next valid frame. It returns an error only when the
// underlying reader fails (io.EOF when the line closed).
func (fr *frameReader) next() (frameType, []byte, error) {
	for {
		t, payload, err := fr.try()
		if err == nil {
			return t, payload, nil
		}
		if !errors.Is(err, errFrameCorrupt) {
			return 0, nil, err
		}
	}
}

// try reads one frame starting at the next magic. On a bad frame it
// consumes only the first magic byte, so a real frame that starts inside the
// garbage is still found.
func (fr *frameReader) try() (frameType, []byte, error) {
	for {
		b, err := fr.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		if b != frameMagic0 {
			fr.skipped++
			continue
		}
		peek, err := fr.r.Peek(headerLen - 1)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, nil, io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		if peek[0] != frameMagic1 {
			fr.skipped++
			continue
		}
		t := frameType(peek[1])
		n := binary.BigEndian.Uint32(peek[2:6])
		if t < frameHello || t > frameShutdown || n > maxPayload {
			fr.skipped++
			return 0, nil, errFrameCorrupt
		}
		whole, err := fr.peekFull(headerLen - 1 + int(n) + 4)
		if err != nil {
			return 0, nil, err
		}
		body := whole[1 : 1+4+1+int(n)] // type, length, payload
		sum := binary.BigEndian.Uint32(whole[len(whole)-4:])
		if crc32.Checksum(body, crcTable) != sum {
			fr.skipped++
			return 0, nil, errFrameCorrupt
		}
		payload := append([]byte(nil), whole[headerLen-1:headerLen-1+int(n)]...)
		if _, err := fr.r.Discard(len(whole)); err != nil {
			return 0, nil, err
		}
		return t, payload, nil
	}
}

// peekFull peeks n bytes, growing past bufio's buffer size when a frame is
// larger than it.
func (fr *frameReader) peekFull(n int) ([]byte, error) {
	if n > fr.r.Size() {
		fr.r = bufio.NewReaderSize(fr.r, n)
	}
	b, err := fr.r.Peek(n)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return b, err
}
