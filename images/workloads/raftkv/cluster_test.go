package raftkv

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raft"
)

// soak reports whether the long variants should run ($FTVM_SOAK set).
func soak() bool { return os.Getenv("FTVM_SOAK") != "" }

// kvCluster runs n servers on an in-process network.
type kvCluster struct {
	t            *testing.T
	n            int
	net          *raft.Network
	persisters   []*raft.MemoryPersister
	maxRaftState int

	mu      sync.Mutex
	servers []*Server
}

func newKVCluster(t *testing.T, n, maxRaftState int) *kvCluster {
	c := &kvCluster{t: t, n: n, net: raft.NewNetwork(n, rand.Uint64()), maxRaftState: maxRaftState, servers: make([]*Server, n)}
	for range n {
		c.persisters = append(c.persisters, raft.NewMemoryPersister())
	}
	for i := range n {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range n {
			c.crash(i)
		}
		c.net.Close()
	})
	return c
}

func (c *kvCluster) start(i int) {
	s, err := StartServer(context.Background(), Config{
		Raft: raft.Config{ID: i, Peers: c.n, Transport: c.net.Endpoint(i), Persister: c.persisters[i],
			ElectionTimeout: 200 * time.Millisecond, HeartbeatInterval: 40 * time.Millisecond, RPCTimeout: 80 * time.Millisecond},
		MaxRaftState: c.maxRaftState,
		OpTimeout:    500 * time.Millisecond,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
	c.net.Register(i, s)
}

func (c *kvCluster) crash(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		c.net.Register(i, nil)
		s.Kill()
	}
}

func (c *kvCluster) clerk() *Clerk {
	var cs []Caller
	for i := range c.n {
		cs = append(cs, c.net.Client(i))
	}
	return NewClerk(cs)
}

// workload runs clients doing random Gets, Puts and Appends on a few
// shared keys until stop is closed, each finishing its last op, and
// records every op in h. It returns how many ops completed.
func workload(t *testing.T, c *kvCluster, clients, keys int, h *History, stop <-chan struct{}) int {
	var done atomic.Int64
	var wg sync.WaitGroup
	for cl := range clients {
		wg.Go(func() {
			ck := c.clerk()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				in := ModelInput{Key: fmt.Sprintf("k%d", rand.IntN(keys))}
				switch r := rand.IntN(10); {
				case r < 4:
					in.Kind = OpGet
				case r < 7:
					in.Kind, in.Value = OpPut, fmt.Sprintf("p%d.%d", cl, i)
				default:
					in.Kind, in.Value = OpAppend, fmt.Sprintf("a%d.%d;", cl, i)
				}
				// Generous: the test heals the cluster before stopping, so
				// every op completes; the limit only turns a hang into a
				// failure.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				call := h.Now()
				var out ModelOutput
				var err error
				switch in.Kind {
				case OpGet:
					out.Value, err = ck.Get(ctx, in.Key)
				case OpPut:
					err = ck.Put(ctx, in.Key, in.Value)
				case OpAppend:
					err = ck.Append(ctx, in.Key, in.Value)
				}
				ret := h.Now()
				cancel()
				if err != nil {
					t.Errorf("client %d: %v", cl, err)
					if in.Kind != OpGet {
						h.Add(cl, in, out, call, math.MaxInt64) // may have executed
					}
					return
				}
				h.Add(cl, in, out, call, ret)
				done.Add(1)
			}
		})
	}
	<-stop
	wg.Wait()
	return int(done.Load())
}

// runLinearizable runs the workload under the faults injected by fault
// (called in a loop until the duration ends; it returns with the
// cluster healed), checks the history and the number of ops.
func runLinearizable(t *testing.T, c *kvCluster, duration time.Duration, minOps int, fault func(stop <-chan struct{})) {
	h := NewHistory()
	stop := make(chan struct{})
	var faults sync.WaitGroup
	faults.Go(func() { fault(stop) })
	done := make(chan int, 1)
	go func() { done <- workload(t, c, 5, 4, h, stop) }()
	time.Sleep(duration)
	close(stop)
	faults.Wait()
	n := <-done
	if n < minOps {
		t.Fatalf("only %d ops completed (want at least %d)", n, minOps)
	}
	if err := h.Check(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d ops, linearizable", n)
}

// sleepOrStop sleeps d; false if stop closed first.
func sleepOrStop(d time.Duration, stop <-chan struct{}) bool {
	select {
	case <-time.After(d):
		return true
	case <-stop:
		return false
	}
}

func testDuration(ci, long time.Duration) time.Duration {
	if soak() {
		return long
	}
	return ci
}
