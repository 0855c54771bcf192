package guests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/mapreduce"
	"github.com/ftvm/ftvm/images/workloads/raftkv"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

func TestMain(m *testing.M) {
	// The primary of an ftvm pair (guesttest.StartPair) is this binary.
	if status, ok := guesttest.PairMain(); ok {
		os.Exit(status)
	}
	var opts []kvmhost.Option
	// The replicas' disks are made with the host's mkfs.ext4
	// (storage.CreateDisk); the nested host gets the same binary.
	if p, err := exec.LookPath("mkfs.ext4"); err == nil && !kvmhost.Inside() {
		opts = append(opts, kvmhost.WithFiles(p))
	}
	os.Exit(testimage.Main(m, opts...))
}

// bootTimeout bounds a guest's boot in the nested host, where several
// guests share one emulated CPU.
const bootTimeout = 3 * time.Minute

// guestConfig is a 128 MiB guest at 192.168.127.<host> on the switch.
func guestConfig(t *testing.T, sock string, host int, appendArgs string) instance.Config {
	return instance.Config{
		Image: testimage.Dir(t), NetSocket: sock, MemoryMiB: 128,
		IP: fmt.Sprintf("192.168.127.%d/24", host), MAC: fmt.Sprintf("5a:94:ef:00:01:%02x", host),
		Append: appendArgs,
	}
}

// raftReplicas makes the switch, disks and machines of one raftkv
// replica per election timeout (ms): replica i is 192.168.127.(11+i),
// port 7000, its disk raft<i>, reached from the host at fwds[i].
func raftReplicas(t *testing.T, electionMS []int) (configs []instance.Config, fwds []string) {
	t.Helper()
	var peers []string
	var forwards []network.Forward
	for i := range electionMS {
		guest := fmt.Sprintf("192.168.127.%d:7000", 11+i)
		peers = append(peers, guest)
		fwds = append(fwds, guesttest.FreeAddr(t))
		forwards = append(forwards, network.Forward{Host: fwds[i], Guest: guest})
	}
	sock := guesttest.StartSwitch(t, network.SwitchConfig{Forwards: forwards})
	storeDir := filepath.Join(t.TempDir(), "storage")
	store, err := storage.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	for i, ms := range electionMS {
		disk := fmt.Sprintf("raft%d", i)
		if _, err := store.CreateDisk(context.Background(), disk, 32<<20, storage.CreateOptions{Filesystem: storage.FilesystemExt4}); err != nil {
			t.Fatal(err)
		}
		cfg := guestConfig(t, sock, 11+i, fmt.Sprintf("ftvm.workload=raftkv ftvm.id=%d ftvm.peers=%s ftvm.election-ms=%d ftvm.snapshot-bytes=8192",
			i, strings.Join(peers, ","), ms))
		cfg.Disks, cfg.StorageDir = []string{disk}, storeDir
		configs = append(configs, cfg)
	}
	return configs, fwds
}

// leaderRE matches Raft's log line of a replica that became leader.
var leaderRE = regexp.MustCompile(`msg=leader peer=(\d+) term=(\d+)`)

// TestRaftKVGuests runs three replicas of the Raft key/value service, each
// a guest with its Raft state on its own disk, and three concurrent
// clients on the host that reach them through port forwards. Halfway the
// leader's VM is stopped hard; the others elect a new one and go on; the
// stopped replica boots again on its disk, finds its state and rejoins.
// The clients' history must be linearizable.
func TestRaftKVGuests(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	start := time.Now()
	const n = 3
	// A 10 s election timeout, and the 5 s RPC and 10 s op timeouts that
	// scale with it: three guests share the nested host's one emulated
	// CPU, and a small guest-to-guest RPC on a new connection regularly
	// took over 2 s there (with 4 s, every vote request timed out and no
	// leader was elected in 2 minutes).
	configs, fwds := raftReplicas(t, []int{10000, 10000, 10000})
	replicas := make([]*guesttest.Guest, n)
	for i := range n {
		replicas[i] = guesttest.StartGuest(t, fmt.Sprintf("replica %d", i), configs[i])
	}
	for _, g := range replicas {
		g.Console.WaitFor(t, "ftvm-guest raftkv listening", g.Stopped, bootTimeout)
	}
	t.Logf("3 replicas up in %v", time.Since(start).Round(time.Millisecond))

	// All three phases' ops: about a minute on a quiet nested host, three
	// minutes for the first phase alone seen with four nested hosts on two
	// cores.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := raftkv.NewHistory()
	var clerks []*raftkv.Clerk
	for range 3 {
		ck := raftkv.NewTCPClerk(fwds)
		ck.CallTimeout = 25 * time.Second // above the replicas' 10 s op timeout
		clerks = append(clerks, ck)
	}
	next := make([]int, len(clerks)) // each client's op counter across phases
	phase := func(name string, opsPerClient int) {
		t.Helper()
		began := time.Now()
		var wg sync.WaitGroup
		for c, ck := range clerks {
			wg.Go(func() {
				for range opsPerClient {
					if err := clientOp(ctx, h, ck, c, next[c]); err != nil {
						t.Errorf("client %d: %v", c, err)
						return
					}
					next[c]++
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		t.Logf("%s: %d ops by %d clients in %v", name, opsPerClient*len(clerks), len(clerks), time.Since(began).Round(time.Millisecond))
	}
	phase("three replicas", 6)

	leader := currentLeader(replicas)
	if leader < 0 {
		t.Fatal("no replica logged that it leads, yet the clients' ops committed")
	}
	replicas[leader].Stop(t)
	t.Logf("stopped the leader, replica %d", leader)
	phase("two replicas", 4)

	replicas[leader] = guesttest.StartGuest(t, fmt.Sprintf("replica %d again", leader), configs[leader])
	g := replicas[leader]
	// The whole line: the console receives it a byte at a time.
	g.Console.WaitFor(t, "ftvm-guest raftkv listening", g.Stopped, bootTimeout)
	restoredRE := regexp.MustCompile(`restored_bytes=(\d+)\r?\n`)
	m := restoredRE.FindStringSubmatch(g.Console.String())
	for deadline := time.Now().Add(time.Minute); m == nil && time.Now().Before(deadline); m = restoredRE.FindStringSubmatch(g.Console.String()) {
		time.Sleep(50 * time.Millisecond)
	}
	if m == nil || m[1] == "0" {
		t.Fatalf("replica %d booted again without its Raft state; console:\n%s", leader, g.Console.String())
	}
	t.Logf("replica %d booted again with %s bytes of Raft state from its disk", leader, m[1])
	phase("three replicas again", 4)

	if err := h.Check(30 * time.Second); err != nil {
		for i, g := range replicas {
			t.Logf("replica %d console:\n%s", i, g.Console.String())
		}
		t.Fatal(err)
	}
	var attempts, retries int
	for _, ck := range clerks {
		attempts, retries = attempts+ck.Attempts, retries+ck.Retries
	}
	t.Logf("%d operations linearizable (porcupine); %d requests, %d retries; whole test %v",
		len(h.Operations()), attempts, retries, time.Since(start).Round(time.Millisecond))
}

// clientOp is client c's op number i: a Put, an Append or a Get of one
// of three keys, recorded in h.
func clientOp(ctx context.Context, h *raftkv.History, ck *raftkv.Clerk, c, i int) error {
	key := fmt.Sprintf("k%d", (c+i)%3)
	val := fmt.Sprintf("%d.%d;", c, i)
	call := h.Now()
	switch i % 3 {
	case 0:
		if err := ck.Put(ctx, key, val); err != nil {
			return err
		}
		h.Add(c, raftkv.ModelInput{Kind: raftkv.OpPut, Key: key, Value: val}, raftkv.ModelOutput{}, call, h.Now())
	case 1:
		if err := ck.Append(ctx, key, val); err != nil {
			return err
		}
		h.Add(c, raftkv.ModelInput{Kind: raftkv.OpAppend, Key: key, Value: val}, raftkv.ModelOutput{}, call, h.Now())
	default:
		v, err := ck.Get(ctx, key)
		if err != nil {
			return err
		}
		h.Add(c, raftkv.ModelInput{Kind: raftkv.OpGet, Key: key}, raftkv.ModelOutput{Value: v}, call, h.Now())
	}
	return nil
}

// currentLeader is the replica that logged leadership of the highest
// term, -1 if none did.
func currentLeader(replicas []*guesttest.Guest) int {
	leader, best := -1, -1
	for i, g := range replicas {
		for _, m := range leaderRE.FindAllStringSubmatch(g.Console.String(), -1) {
			if term, _ := strconv.Atoi(m[2]); term > best {
				leader, best = i, term
			}
		}
	}
	return leader
}

// TestMapReduceGuests runs a word count over a coordinator guest and two
// worker guests, which fetch intermediate files from each other over the
// guest network. The coordinator makes the inputs from a seed
// (mapreduce.GenerateSplits), so the test knows them without shipping
// files into a disk image, and prints the output on its console; it must
// equal a sequential run over the same inputs, and every guest must end
// with exit status 0.
func TestMapReduceGuests(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	start := time.Now()
	const (
		seed, splits, nReduce = 20261207, 6, 2
		coordinator           = "192.168.127.20:7000"
	)
	sock := guesttest.StartSwitch(t, network.SwitchConfig{})
	// A 30 s task timeout: a task in the nested host took over 10 s on a
	// loaded machine, and running it again elsewhere only adds load.
	c := guesttest.StartGuest(t, "coordinator", guestConfig(t, sock, 20, fmt.Sprintf(
		"ftvm.workload=mapreduce-coordinator ftvm.disk=none ftvm.app=wordcount ftvm.seed=%d ftvm.splits=%d ftvm.nreduce=%d ftvm.workers=2 ftvm.task-timeout-ms=30000",
		seed, splits, nReduce)))
	// The workers start once the coordinator listens: a worker gives up
	// on a coordinator it cannot reach for 15 s.
	c.Console.WaitFor(t, "ftvm-guest mapreduce-coordinator listening", c.Stopped, bootTimeout)
	var workers []*guesttest.Guest
	for i := range 2 {
		workers = append(workers, guesttest.StartGuest(t, fmt.Sprintf("worker %d", i), guestConfig(t, sock, 21+i,
			"ftvm.workload=mapreduce-worker ftvm.disk=none ftvm.coordinator="+coordinator)))
	}
	c.Console.WaitFor(t, "ftvm-guest mapreduce done", c.Stopped, 2*bootTimeout)
	t.Logf("job done %v after the coordinator booted; %s", time.Since(start).Round(time.Millisecond), lineWith(c.Console.String(), "ftvm-guest mapreduce done"))
	for _, g := range append(workers, c) {
		if status := g.WaitExit(t, time.Minute); status != 0 {
			t.Fatalf("%s exited with status %d; console:\n%s", g.Name, status, g.Console.String())
		}
	}

	console := c.Console.String()
	var got []string
	for _, l := range strings.Split(console, "\n") {
		// The serial console ends lines with CR LF.
		if v, ok := strings.CutPrefix(strings.TrimSuffix(l, "\r"), "ftvm-guest mapreduce out "); ok {
			got = append(got, v)
		}
	}
	want := strings.Split(strings.TrimSuffix(string(mapreduce.Sequential(mapreduce.WordCount(), mapreduce.GenerateSplits(splits, seed))), "\n"), "\n")
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("the guests' output differs from a sequential run\nguests:\n%q\nsequential:\n%q\ncoordinator console:\n%s", got, want, console)
	}
	for i := range workers {
		addr := fmt.Sprintf("worker=192.168.127.%d:7000", 21+i)
		if tasks := strings.Count(console, addr); tasks == 0 {
			t.Errorf("worker %d did no task; coordinator console:\n%s", i, console)
		} else {
			t.Logf("worker %d did %d tasks", i, tasks)
		}
	}
	t.Logf("%d output lines equal the sequential run; whole test %v", len(got), time.Since(start).Round(time.Millisecond))
}

// lineWith returns the first line of s that contains what.
func lineWith(s, what string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, what) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
