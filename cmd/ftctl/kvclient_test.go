package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ftvm/ftvm/images/workloads/kv"
)

func runKVClient(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newKVClientCommand()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true // as the root command does
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestKVClientCommand(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- kv.NewServer(kv.OpenMemory()).Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	out, err := runKVClient(t, "--addr", ln.Addr().String(), "--duration", "600ms", "--progress", "200ms")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"the server answered an ECHO", "requests, last ", "req/s: ", "latency p50 ", " answers correct"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	if _, err := runKVClient(t); err == nil || !strings.Contains(err.Error(), "--addr") {
		t.Errorf("no --addr: %v", err)
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closed.Close()
	if out, err := runKVClient(t, "--addr", closed.Addr().String(), "--wait", "700ms"); exitCode(err) != 1 || !strings.Contains(err.Error(), "no kv server answers") {
		t.Errorf("nobody listening: exit %d %v\n%s", exitCode(err), err, out)
	}
}

// TestKVClientCommandWrongAnswer: a server that acknowledges every PUT
// with the same sequence number and answers GET like PUT makes the client
// exit with status 2.
func TestKVClientCommandWrongAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewScanner(c)
		for r.Scan() {
			reply := "OK 1"
			if text, ok := strings.CutPrefix(r.Text(), "ECHO "); ok {
				reply = text
			}
			if _, err := c.Write([]byte(reply + "\n")); err != nil {
				return
			}
		}
	}()
	out, err := runKVClient(t, "--addr", ln.Addr().String(), "--duration", "10s", "--clients", "1")
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "wrong answer to ") {
		t.Fatalf("exit %d %v\n%s", exitCode(err), err, out)
	}
	t.Logf("%v\n%s", err, out)
}

// TestKVClientCommandHistory: against the real kv server, the history is
// written, checks linearizable, and every written key reads back.
func TestKVClientCommandHistory(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- kv.NewServer(kv.OpenMemory()).Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	history := filepath.Join(t.TempDir(), "history.jsonl")
	out, err := runKVClient(t, "--addr", ln.Addr().String(), "--duration", "500ms", "--clients", "3", "--history", history)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"3 clients, ", "errors: 0\n", "longest wait for an answer: ", "read back all ", "linearizable: yes (", "history of "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	data, err := os.ReadFile(history)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n < 50 || !strings.Contains(string(data), `"op":"PUT"`) {
		t.Errorf("history of %d lines:\n%.500s", n, data)
	}
	if _, err := os.Stat(strings.TrimSuffix(history, ".jsonl") + ".html"); err == nil {
		t.Error("a visualization was written for a linearizable history")
	}
}

// TestKVClientCommandNotLinearizable: a server that acknowledges every PUT
// and forgets it (GET says NOTFOUND) gets past the clients' own checks
// with shared keys, but not the read-back or the linearizability check.
func TestKVClientCommandNotLinearizable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var seq atomic.Uint64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewScanner(c)
				for r.Scan() {
					reply := "NOTFOUND"
					if text, ok := strings.CutPrefix(r.Text(), "ECHO "); ok {
						reply = text
					} else if strings.HasPrefix(r.Text(), "PUT ") {
						reply = fmt.Sprintf("OK %d", seq.Add(1))
					}
					if _, err := c.Write([]byte(reply + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	history := filepath.Join(t.TempDir(), "history.jsonl")
	out, err := runKVClient(t, "--addr", ln.Addr().String(), "--duration", "300ms", "--clients", "2", "--history", history)
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "did not read back") || !strings.Contains(err.Error(), "not linearizable") {
		t.Fatalf("exit %d %v\n%s", exitCode(err), err, out)
	}
	if !strings.Contains(out, "linearizable: NO") || !strings.Contains(out, "fit one order, the next cannot") {
		t.Errorf("output:\n%s", out)
	}
	html, err := os.ReadFile(strings.TrimSuffix(history, ".jsonl") + ".html")
	if err != nil || !strings.Contains(string(html), "<html") {
		t.Errorf("visualization: %v", err)
	}
}
