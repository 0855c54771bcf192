package kv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// MaxLine is the longest request line, newline included. A longer line
// gets "ERR line too long" and the connection is closed, since the rest of
// the line cannot be told apart from the next request.
const MaxLine = 64 << 10

// Protocol (one request per line, every line ends in \n, bytes are taken
// as they are: no \r stripping, no escaping):
//
//	PUT <key> <value>\n  -> OK <seq>\n        value: rest of the line, may be empty or hold spaces;
//	                                          replied after the record is fsync'd
//	GET <key>\n          -> VALUE <value>\n | NOTFOUND\n
//	ECHO <text>\n        -> <text>\n          (ECHO\n -> \n)
//	STATS\n              -> STATS keys=<n> seq=<n> log_bytes=<n> store=disk|memory conns=<n> requests=<n>\n
//	anything else        -> ERR <reason>\n    (the connection stays open)
//
// Keys are non-empty and hold no space. Requests on one connection may be
// pipelined; replies come in request order.

// Server serves a Store over TCP, one goroutine per connection.
type Server struct {
	store    *Store
	requests atomic.Uint64
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// NewServer returns a server for store.
func NewServer(store *Store) *Server {
	return &Server{store: store, conns: map[net.Conn]struct{}{}}
}

// Serve accepts connections on ln until ctx is cancelled or ln fails, then
// closes ln and every connection and waits for their goroutines. It
// returns nil after a cancellation.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.closeConns()
	})
	defer stop()
	var err error
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			break
		}
		if !s.track(c) {
			c.Close()
			continue
		}
		wg.Go(func() {
			defer s.untrack(c)
			s.serveConn(c)
		})
	}
	ln.Close()
	s.closeConns()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("kv server: accept: %w", err)
}

// track registers c; false means the server is shutting down.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

func (s *Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func (s *Server) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// serveConn answers requests until the client closes, a write fails or a
// line is too long. Replies are flushed when no further request is already
// buffered, so pipelined requests share writes.
func (s *Server) serveConn(c net.Conn) {
	r := bufio.NewReaderSize(c, MaxLine)
	w := bufio.NewWriter(c)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			fmt.Fprintf(w, "ERR line too long (max %d bytes)\n", MaxLine)
			w.Flush()
			return
		}
		if err != nil { // io.EOF, possibly after a partial line: nothing to answer
			return
		}
		s.Handle(w, line[:len(line)-1])
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// Handle answers one request line (without its newline) on w.
func (s *Server) Handle(w io.Writer, line []byte) {
	s.requests.Add(1)
	cmd, arg, hasArg := bytes.Cut(line, []byte{' '})
	switch string(cmd) {
	case "PUT":
		key, value, ok := bytes.Cut(arg, []byte{' '})
		if !hasArg || !ok || len(key) == 0 {
			io.WriteString(w, "ERR usage: PUT <key> <value>\n")
			return
		}
		seq, err := s.store.Put(key, value)
		if err != nil {
			fmt.Fprintf(w, "ERR put: %s\n", oneLine(err))
			return
		}
		fmt.Fprintf(w, "OK %d\n", seq)
	case "GET":
		if !hasArg || len(arg) == 0 || bytes.IndexByte(arg, ' ') >= 0 {
			io.WriteString(w, "ERR usage: GET <key>\n")
			return
		}
		v, ok := s.store.Get(arg)
		if !ok {
			io.WriteString(w, "NOTFOUND\n")
			return
		}
		writeLine(w, "VALUE ", v)
	case "ECHO":
		writeLine(w, "", arg)
	case "STATS":
		st := s.store.Stats()
		kind := "memory"
		if st.Durable {
			kind = "disk"
		}
		fmt.Fprintf(w, "STATS keys=%d seq=%d log_bytes=%d store=%s conns=%d requests=%d\n",
			st.Keys, st.Seq, st.LogBytes, kind, s.connCount(), s.requests.Load())
	default:
		fmt.Fprintf(w, "ERR unknown command %q (have PUT, GET, ECHO, STATS)\n", truncate(cmd, 32))
	}
}

func writeLine(w io.Writer, prefix string, b []byte) {
	io.WriteString(w, prefix)
	w.Write(b)
	io.WriteString(w, "\n")
}

// oneLine keeps an error message from breaking the line protocol.
func oneLine(err error) string {
	return string(bytes.ReplaceAll([]byte(err.Error()), []byte{'\n'}, []byte{' '}))
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
