package raftkv

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raft/rafttest"
)

// TestTCPNodes runs three nodes as guests will (one port each, a data
// directory each), with TCP clerks; one node is stopped and restarted
// from its directory mid-run, and the history is checked.
func TestTCPNodes(t *testing.T) {
	const n = 3
	lns, addrs, dirs := rafttest.LoopbackNodes(t, n)
	type node struct {
		cancel context.CancelFunc
		done   chan error
	}
	run := func(i int, ln net.Listener) node {
		ctx, cancel := context.WithCancel(context.Background())
		nd := node{cancel: cancel, done: make(chan error, 1)}
		go func() {
			nd.done <- ServeNode(ctx, NodeConfig{ID: i, Addrs: addrs, Dir: dirs[i], MaxRaftState: 2000}, ln)
		}()
		return nd
	}
	nodes := make([]node, n)
	for i := range n {
		nodes[i] = run(i, lns[i].View())
	}
	defer func() {
		for _, nd := range nodes {
			nd.cancel()
			if err := <-nd.done; err != nil {
				t.Error(err)
			}
		}
	}()

	h := NewHistory()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ops := 0
	step := func(ck *Clerk, client, i int) {
		t.Helper()
		key := fmt.Sprintf("k%d", i%3)
		call := h.Now()
		if i%2 == 0 {
			v := fmt.Sprintf("%d.%d;", client, i)
			if err := ck.Append(ctx, key, v); err != nil {
				t.Fatal(err)
			}
			h.Add(client, ModelInput{Kind: OpAppend, Key: key, Value: v}, ModelOutput{}, call, h.Now())
		} else {
			v, err := ck.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			h.Add(client, ModelInput{Kind: OpGet, Key: key}, ModelOutput{Value: v}, call, h.Now())
		}
		ops++
	}
	a, b := NewTCPClerk(addrs), NewTCPClerk(addrs)
	for i := range 10 {
		step(a, 0, i)
		step(b, 1, i)
	}
	// Stop the node the clerk last used (likely the leader) and restart
	// it on its address from its directory.
	victim := a.leader
	nodes[victim].cancel()
	if err := <-nodes[victim].done; err != nil {
		t.Fatal(err)
	}
	for i := 10; i < 20; i++ {
		step(a, 0, i)
		step(b, 1, i)
	}
	nodes[victim] = run(victim, lns[victim].View())
	for i := 20; i < 30; i++ {
		step(a, 0, i)
		step(b, 1, i)
	}
	if ops != 60 {
		t.Fatalf("%d ops", ops)
	}
	if err := h.Check(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}
