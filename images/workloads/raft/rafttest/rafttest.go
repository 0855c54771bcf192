// Package rafttest holds helpers shared by the tests of raft and the
// services on it.
package rafttest

import (
	"net"
	"testing"
)

// LoopbackNodes opens n loopback listeners and a temporary directory for
// each: what a TCP cluster of n nodes needs.
func LoopbackNodes(t testing.TB, n int) (lns []net.Listener, addrs, dirs []string) {
	t.Helper()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
		dirs = append(dirs, t.TempDir())
	}
	return lns, addrs, dirs
}
