package logchannel

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecodeHello: the handshake is the first thing a peer that may be
// anyone sends. DecodeHello never panics, refuses with ErrHandshake or
// ErrVersion, and what it accepts is a hello of this version that
// re-encodes to the same bytes.
func FuzzDecodeHello(f *testing.F) {
	valid := AppendHello(nil, Hello{Version: ProtocolVersion, Role: RoleSender, Session: 7, Generation: 3})
	f.Add(valid)
	f.Add(AppendHello(nil, Hello{Version: ProtocolVersion, Role: RoleReceiver, Session: 1<<64 - 1, Generation: 1}))
	f.Add(AppendHello(nil, Hello{Version: ProtocolVersion + 1, Role: RoleSender}))
	f.Add(AppendHello(nil, Hello{Version: ProtocolVersion, Role: 9}))
	f.Add(valid[:5])
	f.Add(append(bytes.Clone(valid), 0))
	reserved := bytes.Clone(valid)
	reserved[6] = 1
	f.Add(reserved)
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0xa5}) // a TLS ClientHello's record header
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHello(b)
		if err != nil {
			if !errors.Is(err, ErrHandshake) && !errors.Is(err, ErrVersion) {
				t.Fatalf("refused with %v, neither ErrHandshake nor ErrVersion", err)
			}
			return
		}
		if h.Version != ProtocolVersion {
			t.Fatalf("accepted version %d", h.Version)
		}
		if re := AppendHello(nil, h); !bytes.Equal(re, b) {
			t.Fatalf("accepted hello re-encodes differently:\n got %x\nwant %x", re, b)
		}
	})
}
