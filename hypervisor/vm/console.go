package vm

import (
	"io"
	"strings"
	"sync"
)

// consoleTail passes console output through and keeps its last bytes, so an
// error report can show what the guest printed before it died.
type consoleTail struct {
	mu   sync.Mutex
	out  io.Writer
	ring []byte
	max  int
}

func newConsoleTail(out io.Writer, max int) *consoleTail {
	if out == nil {
		out = io.Discard
	}
	return &consoleTail{out: out, max: max}
}

func (c *consoleTail) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.ring = append(c.ring, p...)
	if len(c.ring) > 2*c.max {
		c.ring = c.ring[:copy(c.ring, c.ring[len(c.ring)-c.max:])]
	}
	c.mu.Unlock()
	return c.out.Write(p)
}

// Lines returns up to n of the last lines written.
func (c *consoleTail) Lines(n int) string {
	c.mu.Lock()
	s := string(c.ring)
	c.mu.Unlock()
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// String is everything kept.
func (c *consoleTail) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.ring)
}
