// Package rafttest holds helpers shared by the tests of raft and the
// services on it.
package rafttest

import (
	"net"
	"sync"
	"testing"
)

// LoopbackNodes opens n loopback listeners and a temporary directory for
// each: what a TCP cluster of n nodes needs.
func LoopbackNodes(t testing.TB, n int) (lns []*Listener, addrs, dirs []string) {
	t.Helper()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := newListener(ln)
		t.Cleanup(l.close)
		lns = append(lns, l)
		addrs = append(addrs, ln.Addr().String())
		dirs = append(dirs, t.TempDir())
	}
	return lns, addrs, dirs
}

// Listener keeps one port open across node restarts: each incarnation
// of a node serves a View, whose Close ends only that view. Closing and
// listening again on the port instead races with the kernel handing it to
// an outgoing connection as its local port.
type Listener struct {
	ln    net.Listener
	conns chan net.Conn
	stop  chan struct{}
	done  chan struct{}
}

func newListener(ln net.Listener) *Listener {
	l := &Listener{ln: ln, conns: make(chan net.Conn), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case l.conns <- c:
			case <-l.stop:
				c.Close()
				return
			}
		}
	}()
	return l
}

func (l *Listener) close() {
	close(l.stop)
	l.ln.Close()
	<-l.done
}

// View returns a listener for one incarnation of the node.
func (l *Listener) View() net.Listener {
	return &view{l: l, closed: make(chan struct{})}
}

type view struct {
	l      *Listener
	closed chan struct{}
	once   sync.Once
}

func (v *view) Accept() (net.Conn, error) {
	select {
	case c := <-v.l.conns:
		return c, nil
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.l.stop:
		return nil, net.ErrClosed
	}
}

func (v *view) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *view) Addr() net.Addr { return v.l.ln.Addr() }
