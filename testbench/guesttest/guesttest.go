// Package guesttest holds helpers for tests that boot the guest image: a
// console that waits for lines, a plain VM run for a test (guest.go), a
// guest run as an ftvm pair whose primary the test can kill (pair.go),
// the embedded switch on a temporary socket, and a client of the kv
// workload through a port forward.
package guesttest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/testbench/kvclient"
)

// Console collects guest output and lets a test wait for a line.
type Console struct {
	mu      sync.Mutex
	buf     strings.Builder
	changed chan struct{}
}

// NewConsole returns an empty console.
func NewConsole() *Console { return &Console{changed: make(chan struct{}, 1)} }

func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(p)
	c.mu.Unlock()
	select {
	case c.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// WaitFor waits until the console shows what; it fails the test if the VM
// stops first (an error arrives on stopped) or timeout passes.
func (c *Console) WaitFor(t testing.TB, what string, stopped <-chan error, timeout time.Duration) {
	t.Helper()
	c.waitUntil(t, fmt.Sprintf("%q", what), stopped, timeout, func(out string) bool { return strings.Contains(out, what) })
}

// WaitForLine waits until the console shows a whole line (its newline
// printed too) that contains what, and returns that line. A guest's line
// can reach the console in pieces: a test that waited for its start with
// WaitFor and parsed it at once read a half line once.
func (c *Console) WaitForLine(t testing.TB, what string, stopped <-chan error, timeout time.Duration) string {
	t.Helper()
	var line string
	c.waitUntil(t, fmt.Sprintf("a whole line with %q", what), stopped, timeout, func(out string) (ok bool) {
		line, ok = wholeLine(out, what)
		return ok
	})
	return line
}

// waitUntil waits until done holds for the console's output, failing the
// test (naming what was awaited) if the VM stops first or timeout passes.
func (c *Console) waitUntil(t testing.TB, awaited string, stopped <-chan error, timeout time.Duration, done func(string) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for !done(c.String()) {
		select {
		case <-c.changed:
		case err := <-stopped:
			t.Fatalf("VM stopped (%v) before %s; console:\n%s", err, awaited, c.String())
		case <-deadline:
			t.Fatalf("no %s within %v; console:\n%s", awaited, timeout, c.String())
		}
	}
}

// wholeLine finds the first line of out that contains what, if a newline
// ends it, and returns it without the newline.
func wholeLine(out, what string) (string, bool) {
	i := strings.Index(out, what)
	if i < 0 {
		return "", false
	}
	// Only the last line can lack its newline: no whole line holds what.
	end := strings.IndexByte(out[i:], '\n')
	if end < 0 {
		return "", false
	}
	start := strings.LastIndexByte(out[:i], '\n') + 1
	return strings.TrimSuffix(out[start:i+end], "\r"), true
}

// StartSwitch serves an embedded switch on a socket in a temporary
// directory until the test ends, and returns the socket once it is up.
func StartSwitch(t testing.TB, cfg network.SwitchConfig) string {
	t.Helper()
	sw, err := network.NewSwitch(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "net.sock")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	served := make(chan error, 1)
	go func() { served <- sw.Serve(ctx, sock) }()
	// Up, not the socket file: the forwards are exposed after the socket.
	select {
	case <-sw.Up():
		return sock
	case err := <-served:
		t.Fatalf("switch stopped before it came up: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("switch never came up")
	}
	return ""
}

// FreeAddr returns a loopback TCP address nobody listens on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// DialKV connects to the kv workload through the forward at addr, retrying
// for up to 3 minutes, and proves the path with one ECHO round trip (see
// kvclient.Dial). The connection has no deadline set. The budget is wide
// because "ftvm-guest ready" comes before the workload listens, and in a
// pair every answer (a refusal too) waits for the backup's ack: in the
// nested host, on a loaded CI machine, a primary's kv server had not
// proved itself 30 s after its ready line. A healthy guest answers at once,
// so the budget costs time only on failure.
func DialKV(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := kvclient.Dial(context.Background(), addr, 3*time.Minute)
	if err != nil {
		t.Fatalf("forward %s does not reach the guest's server: %v", addr, err)
	}
	return c.NetConn(), c.Reader()
}

// KVLoad is one run of the standard kv client load: request latency (ECHO
// round trips), bulk throughput (16 KiB ECHO lines) and durable write rate
// (PUT, each fsync'd before its OK).
type KVLoad struct {
	P50, P99 time.Duration
	MBps     float64
	Puts     float64 // per second
}

// RunKVLoad runs the standard load over conn.
func RunKVLoad(tb testing.TB, conn net.Conn, r *bufio.Reader) KVLoad {
	tb.Helper()
	var res KVLoad
	lat := make([]time.Duration, 0, 300)
	for i := 0; i < 300; i++ {
		start := time.Now()
		fmt.Fprintf(conn, "ECHO ping%d\n", i)
		if line, err := r.ReadString('\n'); err != nil || line != fmt.Sprintf("ping%d\n", i) {
			tb.Fatalf("ECHO: %q %v", line, err)
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res.P50, res.P99 = lat[len(lat)/2], lat[len(lat)*99/100]

	payload := strings.Repeat("x", 16<<10)
	const bulk = 40
	start := time.Now()
	for i := 0; i < bulk; i++ {
		fmt.Fprintf(conn, "ECHO %s\n", payload)
		if line, err := r.ReadString('\n'); err != nil || len(line) != len(payload)+1 {
			tb.Fatalf("bulk ECHO: %d bytes, %v", len(line), err)
		}
	}
	res.MBps = float64(2*bulk*len(payload)) / time.Since(start).Seconds() / 1e6

	const puts = 100
	start = time.Now()
	for i := 0; i < puts; i++ {
		fmt.Fprintf(conn, "PUT bench%d %d\n", i, i)
		if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
			tb.Fatalf("PUT: %q %v", line, err)
		}
	}
	res.Puts = puts / time.Since(start).Seconds()
	return res
}
