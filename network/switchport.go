package network

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
)

// SwitchPort is a VMM's attachment to a Switch over its unix socket: one
// switch port, spoken to in the frame-stream protocol.
type SwitchPort struct {
	*portCore
	conn net.Conn
}

var _ Port = (*SwitchPort)(nil)

// DialSwitch connects to the switch listening on socketPath. ctx bounds the
// connect only; the port lives until Close or until the switch goes away
// (Done). A VMM that crashed, or whose switch restarted, simply dials again:
// the switch learns the guest's MAC from its next frame.
func DialSwitch(ctx context.Context, socketPath string) (*SwitchPort, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("attach to network switch: %w (is \"ftctl net serve --socket %s\" running?)", err, socketPath)
	}
	return newSwitchPort(conn, "switch port "+socketPath), nil
}

// newSwitchPort wraps an established frame-stream connection.
func newSwitchPort(conn net.Conn, name string) *SwitchPort {
	s := &streamIO{conn: conn, fr: NewFrameReader(bufio.NewReaderSize(conn, 64<<10))}
	return &SwitchPort{portCore: newPortCore(name, s, DefaultSendQueue), conn: conn}
}

// streamIO is the frame-stream backend: length-prefixed frames on a stream
// socket.
type streamIO struct {
	conn net.Conn
	fr   *FrameReader
	hdrs []byte
}

func (s *streamIO) readFrame() ([]byte, error) { return s.fr.Next() }

// writeFrames writes the batch with one writev: a length prefix and the frame
// for each, so a burst of small frames costs one syscall.
func (s *streamIO) writeFrames(frames [][]byte) error {
	s.hdrs = s.hdrs[:0]
	for _, f := range frames {
		s.hdrs = binary.BigEndian.AppendUint32(s.hdrs, uint32(len(f)))
	}
	bufs := make(net.Buffers, 0, 2*len(frames))
	for i, f := range frames {
		bufs = append(bufs, s.hdrs[i*frameHeaderSize:(i+1)*frameHeaderSize], f)
	}
	_, err := bufs.WriteTo(s.conn)
	return err
}

func (s *streamIO) close() error { return s.conn.Close() }
