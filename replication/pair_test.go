package replication_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
	"github.com/ftvm/ftvm/storage/server"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

// backupProcessEnv makes the test binary a backup process (the kill test
// needs one it can SIGKILL): the value is a JSON-free "listen|image|storage".
const backupProcessEnv = "FTVM_TEST_BACKUP_PROCESS"

// primaryProcessEnv makes the test binary a primary process (the failover
// test kills one): "peer|image|storage|switch|arbiter|storage-server".
const primaryProcessEnv = "FTVM_TEST_PRIMARY_PROCESS"

func TestMain(m *testing.M) {
	if spec := os.Getenv(backupProcessEnv); spec != "" {
		os.Exit(backupProcess(spec))
	}
	if spec := os.Getenv(primaryProcessEnv); spec != "" {
		os.Exit(primaryProcess(spec))
	}
	if spec := os.Getenv(chainBackupEnv); spec != "" {
		os.Exit(chainBackupProcess(spec))
	}
	// The nested host has busybox only: it gets this machine's tools to
	// make the guests' ext4 disks and to read what the guests left on them.
	var opts []kvmhost.Option
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs"} {
		if p, err := findHostTool(tool); err == nil && !kvmhost.Inside() {
			opts = append(opts, kvmhost.WithFiles(p))
		}
	}
	os.Exit(testimage.Main(m, opts...))
}

// Log channel settings for a pair inside the nested host, where two VMs
// share one emulated CPU: heartbeats can be late by a second.
var pairLog = logchannel.Config{Timeout: 10 * time.Second}

// pairSetup is what both sides of a test pair share.
type pairSetup struct {
	fwd, sock, storeDir, logSock string
	inst                         instance.Config
	// backupFailed gets a backup's error as soon as it stops with one.
	backupFailed chan error
}

func newPairSetup(t testing.TB) *pairSetup {
	tmp := t.TempDir()
	s := &pairSetup{fwd: guesttest.FreeAddr(t), storeDir: filepath.Join(tmp, "storage"), logSock: filepath.Join(tmp, "log.sock"),
		backupFailed: make(chan error, 1)}
	s.sock = guesttest.StartSwitch(t, network.SwitchConfig{Forwards: []network.Forward{{Host: s.fwd, Guest: "192.168.127.2:7000"}}})
	store, err := storage.Open(s.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateDisk(context.Background(), "data", 32<<20, storage.CreateOptions{Filesystem: storage.FilesystemExt4}); err != nil {
		t.Fatal(err)
	}
	s.inst = instance.Config{
		Image: testimage.Dir(t), NetSocket: s.sock, IP: "192.168.127.2/24",
		Disks: []string{"data"}, StorageDir: s.storeDir,
		Append: "ftvm.workload=kv ftvm.port=7000", MemoryMiB: 128,
	}
	return s
}

type backupRun struct {
	res *replication.BackupResult
	err error
}

// startBackup runs a backup in this process and returns once it listens.
func (s *pairSetup) startBackup(t testing.TB, ctx context.Context, logCfg logchannel.Config) <-chan backupRun {
	return s.startBackupWith(t, ctx, replication.BackupConfig{Log: logCfg})
}

// startBackupWith is startBackup with more of the backup's configuration
// (an arbiter); the instance, address and Listening are the setup's.
func (s *pairSetup) startBackupWith(t testing.TB, ctx context.Context, bcfg replication.BackupConfig) <-chan backupRun {
	done := make(chan backupRun, 1)
	listening := make(chan struct{})
	bcfg.Instance = s.inst
	bcfg.Instance.Console = nil
	bcfg.Listen = "unix:" + s.logSock
	bcfg.Listening = func(net.Addr) { close(listening) }
	go func() {
		res, err := replication.RunBackup(ctx, bcfg)
		if err != nil {
			s.backupFailed <- fmt.Errorf("backup: %w", err)
		}
		done <- backupRun{res, err}
	}()
	select {
	case <-listening:
	case r := <-done:
		t.Fatalf("backup failed to start: %v", r.err)
	}
	return done
}

type primaryRun struct {
	p       *replication.Primary
	console *guesttest.Console
	cancel  context.CancelFunc
	// finished is closed when Run returned, with its outcome in result:
	// the test and its cleanup may both wait for it.
	finished chan struct{}
	result   primaryDone
}

// wait returns Run's outcome once it returned.
func (pr *primaryRun) wait() primaryDone {
	<-pr.finished
	return pr.result
}

type primaryDone struct {
	res *replication.PrimaryResult
	err error
}

func (s *pairSetup) startPrimary(t testing.TB, cfg replication.PrimaryConfig) *primaryRun {
	t.Helper()
	pr := &primaryRun{console: guesttest.NewConsole(), finished: make(chan struct{})}
	cfg.Instance = s.inst
	cfg.Instance.Console = pr.console
	if cfg.Peer == "" {
		cfg.Peer = "unix:" + s.logSock
	}
	if cfg.Log.Timeout == 0 {
		cfg.Log = pairLog
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr.cancel = cancel
	p, err := replication.NewPrimary(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	pr.p = p
	t.Cleanup(func() {
		// Stop the VM before closing it: a failed test leaves it running.
		cancel()
		select {
		case <-pr.finished:
		case <-time.After(time.Minute):
		}
		p.Close()
	})
	go func() {
		res, err := p.Run(ctx)
		pr.result = primaryDone{res, err}
		close(pr.finished)
	}()
	stopped := make(chan error, 1)
	go func() {
		select {
		case <-pr.finished:
			stopped <- fmt.Errorf("primary stopped: %v %v", pr.result.res, pr.result.err)
		case err := <-s.backupFailed:
			stopped <- err
		}
	}()
	if cfg.Restore == "" { // a restored guest printed it before its snapshot
		pr.console.WaitFor(t, "ftvm-guest ready", stopped, 5*time.Minute)
	}
	return pr
}

// kvClient drives the kv workload and checks every answer.
type kvClient struct {
	conn net.Conn
	r    *bufio.Reader
	puts map[string]string
	ops  int
}

// dialKVClient connects to the kv guest through the forward at addr.
func dialKVClient(tb testing.TB, addr string) *kvClient {
	conn, r := guesttest.DialKV(tb, addr)
	return &kvClient{conn: conn, r: r, puts: map[string]string{}}
}

// readBack GETs every key the client PUT and checks the last value.
func (c *kvClient) readBack(tb testing.TB) {
	tb.Helper()
	for k, v := range c.puts {
		c.do(tb, "GET "+k, "VALUE "+v, true)
	}
}

// do sends req and checks the answer: the whole line when exact, else its
// start (a PUT's sequence number is the server's to choose).
func (c *kvClient) do(t testing.TB, req, want string, exact bool) string {
	t.Helper()
	// Wide: every answer waits for the backup's ack, and a backup loading
	// its first checkpoint on a loaded machine lags tens of seconds.
	c.conn.SetDeadline(time.Now().Add(3 * time.Minute))
	if _, err := fmt.Fprintf(c.conn, "%s\n", req); err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	if exact && line != want+"\n" || !exact && !strings.HasPrefix(line, want) {
		t.Fatalf("%s: got %q, want %q", req, line, want)
	}
	c.ops++
	return line
}

// mixed does one round of mixed traffic: an ECHO of random bytes, a PUT
// (fsync'd on the guest's disk), a GET of an earlier key; ECHO and GET
// answers are compared byte for byte.
func (c *kvClient) mixed(t testing.TB, i int) {
	b := make([]byte, 1+i%200)
	rand.Read(b)
	msg := hex.EncodeToString(b)
	c.do(t, "ECHO "+msg, msg, true)
	k, v := "k"+strconv.Itoa(i%500), "v"+strconv.Itoa(i)+"-"+msg[:min(len(msg), 16)]
	c.do(t, "PUT "+k+" "+v, "OK ", false)
	c.puts[k] = v
	if i > 0 {
		k := "k" + strconv.Itoa((i*7)%min(i, 500))
		if v, ok := c.puts[k]; ok {
			c.do(t, "GET "+k, "VALUE "+v, true)
		}
	}
}

// The soak's fixed minimum, whatever $FTVM_SOAK says: requests answered
// and state digests the backup checked.
const (
	minSoakRequests = 150
	minSoakDigests  = 10
)

func soakDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("FTVM_SOAK")); err == nil {
		return d
	}
	return 60 * time.Second
}

// TestBackupFollowsPrimaryUnderKVTraffic is the proof of replication: a
// primary boots Linux with the kv workload, a backup replays its log at the
// same time, and a client talks to the primary through the port forward for
// $FTVM_SOAK (default 60 s). The backup checks the primary's register and
// memory digests (every second of wall time and every 16k exits) and loads
// a checkpoint for each watchdog kick; the test asserts that it checked
// many, that none differed, and that it replayed the log to the end.
func TestBackupFollowsPrimaryUnderKVTraffic(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackup(t, bctx, pairLog)
	pr := s.startPrimary(t, replication.PrimaryConfig{StatusEvery: 10 * time.Second})
	booted := time.Now()

	c := dialKVClient(t, s.fwd)
	defer c.conn.Close()
	soak := soakDuration()
	start := time.Now()
	// The soak runs for $FTVM_SOAK and at least minSoakRequests requests,
	// then on until the backup has checked minSoakDigests digests (one a
	// second of wall time).
	for i := 0; time.Since(start) < soak || c.ops < minSoakRequests || pr.p.Status().Recorder.Digests < minSoakDigests+1; i++ {
		c.mixed(t, i)
	}
	mid := pr.p.Status()
	t.Logf("%d requests in %v, all answered correctly; primary: %v", c.ops, time.Since(start).Round(time.Second), mid)

	pr.cancel()
	pd := pr.wait()
	if pd.err != nil {
		t.Fatalf("primary: %v", pd.err)
	}
	b := <-backup
	if b.err != nil {
		t.Fatalf("backup: %v\nprimary console:\n%s", b.err, pr.console.String())
	}
	// The log ended because the primary closed it (not a lost peer), and
	// the primary stopped because it was asked to.
	if b.res.PrimaryErr != nil {
		t.Fatalf("the backup's log ended with %v, want the primary's clean close", b.res.PrimaryErr)
	}
	if pd.res.Reason != vm.StoppedCancelled {
		t.Fatalf("the primary stopped with %v, want cancelled by the test", pd.res.Reason)
	}
	if c.ops < minSoakRequests {
		t.Fatalf("only %d requests answered, want at least %d", c.ops, minSoakRequests)
	}
	ps, bs := pd.res.Final, b.res.Final
	t.Logf("primary: %d exits, %d kicks, log %d bytes in %d batches (%.3f Mbit/s over %v), %d digests, %d checkpoints (%d bytes)",
		pd.res.Stats.SyncExits, pd.res.Stats.Kicks, ps.Recorder.Bytes, ps.Recorder.Batches,
		float64(ps.Recorder.Bytes)*8/1e6/time.Since(booted).Seconds(), time.Since(booted).Round(time.Second),
		ps.Recorder.Digests, ps.Recorder.Checkpoints, ps.Recorder.CheckpointSize)
	t.Logf("backup: %v after %d exits; %d digests matched (last at exit #%d), %d of the primary's %d output hashes matched, %d checkpoints loaded (%d pages); outputs released: %d frames, %d writes, %d flushes, max hold %v",
		b.res.Reason, b.res.Stats.SyncExits, bs.Replayer.Digests, bs.Replayer.LastDigestExit, bs.Replayer.Outputs, ps.Recorder.Outputs,
		bs.Replayer.Checkpoints, bs.Replayer.CheckpointPages,
		ps.Outputs.ReleasedFrames, ps.Outputs.ReleasedWrites, ps.Outputs.ReleasedFlushes, ps.Outputs.MaxHold.Round(time.Millisecond))
	// Every frame and disk write the backup produced had the primary's
	// bytes, and it produced all of them.
	if bs.Replayer.Outputs != ps.Recorder.Outputs || ps.Recorder.Outputs < ps.Outputs.ReleasedFrames+ps.Outputs.ReleasedWrites {
		t.Fatalf("backup matched %d output hashes, the primary logged %d for %d frames and %d writes released",
			bs.Replayer.Outputs, ps.Recorder.Outputs, ps.Outputs.ReleasedFrames, ps.Outputs.ReleasedWrites)
	}
	if ps.Outputs.HeldOutputs != 0 {
		t.Fatalf("%d outputs still held after the primary stopped and the backup acked everything", ps.Outputs.HeldOutputs)
	}
	if bs.Replayer.Digests != ps.Recorder.Digests {
		t.Fatalf("backup checked %d digests, the primary logged %d", bs.Replayer.Digests, ps.Recorder.Digests)
	}
	if min := max(uint64(soak/(2*time.Second)), minSoakDigests); bs.Replayer.Digests < min {
		t.Fatalf("only %d digests in a %v soak, want at least %d", bs.Replayer.Digests, soak, min)
	}
	if bs.Replayer.Outputs == 0 || ps.Outputs.ReleasedFrames < uint64(c.ops) {
		t.Fatalf("%d frames released for %d answers, %d output hashes matched", ps.Outputs.ReleasedFrames, c.ops, bs.Replayer.Outputs)
	}
	if bs.Replayer.Checkpoints != ps.Recorder.Checkpoints {
		t.Fatalf("backup loaded %d checkpoints, the primary sent %d", bs.Replayer.Checkpoints, ps.Recorder.Checkpoints)
	}
	if b.res.Stats.SyncExits+1 < pd.res.Stats.SyncExits {
		t.Fatalf("backup stopped at exit %d, the primary at %d", b.res.Stats.SyncExits, pd.res.Stats.SyncExits)
	}
}

// ackAtPrimary is an ack frame the proxy passed on to the primary: Acked,
// and when the proxy started writing it (the primary cannot have read it
// before).
type ackAtPrimary struct {
	sent  time.Time
	acked uint64
}

// logWatch is what a delayingProxy saw on the wire, decoded on its own:
// the log entries that logged each output hash (in log order), and the acks
// it handed to the primary.
type logWatch struct {
	mu      sync.Mutex
	outputs map[[32]byte][]uint64 // output hash -> seqs of the entries logging it, in order
	acks    []ackAtPrimary
}

// frameStream cuts one direction of a log channel connection into frames:
// the handshake hello, then frames.
type frameStream struct {
	buf   []byte
	hello bool
}

func (fs *frameStream) feed(b []byte, each func(logchannel.Frame)) error {
	fs.buf = append(fs.buf, b...)
	if !fs.hello {
		n := len(logchannel.AppendHello(nil, logchannel.Hello{}))
		if len(fs.buf) < n {
			return nil
		}
		fs.buf, fs.hello = fs.buf[n:], true
	}
	for len(fs.buf) > 0 {
		f, n, err := logchannel.DecodeFrame(fs.buf)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return err
		}
		each(f)
		fs.buf = fs.buf[n:]
	}
	return nil
}

// delayingProxy accepts on its own socket, connects each connection to
// target, passes primary-to-backup bytes at once and delays every
// backup-to-primary byte (acks, heartbeats) by delay. It decodes both
// directions into w.
func delayingProxy(t testing.TB, target string, delay time.Duration, w *logWatch) string {
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	w.outputs = map[[32]byte][]uint64{}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("unix", target)
			if err != nil {
				in.Close()
				return
			}
			go func() {
				defer out.Close()
				var fs frameStream
				b := make([]byte, 64<<10)
				for {
					n, err := in.Read(b)
					if n > 0 {
						if werr := fs.feed(b[:n], w.noteEntries); werr != nil {
							t.Errorf("proxy: primary to backup: %v", werr)
						}
						if _, err := out.Write(b[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			type chunk struct {
				at time.Time
				b  []byte
			}
			q := make(chan chunk, 4096)
			go func() {
				defer close(q)
				for {
					b := make([]byte, 64<<10)
					n, err := out.Read(b)
					if n > 0 {
						q <- chunk{time.Now().Add(delay), b[:n]}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer in.Close()
				var fs frameStream
				for c := range q {
					time.Sleep(time.Until(c.at))
					sent := time.Now()
					if err := fs.feed(c.b, func(f logchannel.Frame) {
						if f.Type == logchannel.FrameAck {
							w.mu.Lock()
							w.acks = append(w.acks, ackAtPrimary{sent, f.Acked})
							w.mu.Unlock()
						}
					}); err != nil {
						t.Errorf("proxy: backup to primary: %v", err)
					}
					if _, err := in.Write(c.b); err != nil {
						return
					}
				}
			}()
		}
	}()
	return sock
}

// noteEntries records the output hashes each entry of a batch frame logs.
func (w *logWatch) noteEntries(f logchannel.Frame) {
	if f.Type != logchannel.FrameBatch {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, e := range f.Entries {
		evs, err := replay.DecodeBatch(e)
		if err != nil {
			continue // the start header is JSON, not a batch
		}
		for _, ev := range evs {
			if ev.Type == replay.Output {
				w.outputs[ev.Hash] = append(w.outputs[ev.Hash], f.FirstSeq+uint64(i))
			}
		}
	}
}

// ackedBefore is the highest ack the proxy had started handing to the
// primary by t.
func (w *logWatch) ackedBefore(t time.Time) uint64 {
	var best uint64
	for _, a := range w.acks {
		if !a.sent.After(t) {
			best = max(best, a.acked)
		}
	}
	return best
}

// TestOutputRuleHoldsOutputsUntilAcked puts a proxy between primary and
// backup that delivers every ack 300 ms late and decodes the traffic both
// ways on its own. For every frame and disk write that left the primary the
// test hashes the bytes that left as the log does, finds the log entry that
// logged that output at its exit (seen on the wire), and checks that the
// proxy had begun handing the primary an ack covering that entry before the
// output left; it also checks that no output left less than 300 ms after it
// was produced, and that the primary went on executing (appending log) while
// outputs were held.
func TestOutputRuleHoldsOutputsUntilAcked(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	const ackDelay = 300 * time.Millisecond
	s := newPairSetup(t)
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackup(t, bctx, pairLog)
	var watch logWatch
	proxy := delayingProxy(t, s.logSock, ackDelay, &watch)

	var mu sync.Mutex
	var released []replication.Released
	var primary *replication.Primary
	pr := s.startPrimary(t, replication.PrimaryConfig{Peer: "unix:" + proxy, OnRelease: func(r replication.Released) {
		mu.Lock()
		released = append(released, r)
		mu.Unlock()
	}})
	primary = pr.p
	conn, r := guesttest.DialKV(t, s.fwd)
	c := &kvClient{conn: conn, r: r, puts: map[string]string{}}
	for i := 0; i < 20; i++ {
		start := time.Now()
		c.mixed(t, i)
		if d := time.Since(start); d < ackDelay {
			t.Fatalf("round %d took %v: an answer came out before its ack could have", i, d)
		}
	}
	conn.Close()
	st := primary.Status()
	pr.cancel()
	if pd := pr.wait(); pd.err != nil {
		t.Fatalf("primary: %v", pd.err)
	}
	bcancel()
	<-backup

	mu.Lock()
	defer mu.Unlock()
	watch.mu.Lock()
	defer watch.mu.Unlock()
	kinds := map[replication.OutputKind]int{}
	ranOn, traced := 0, 0
	used := map[[32]byte]int{} // how many logged occurrences of a hash the releases so far matched
	for _, r := range released {
		kinds[r.Kind]++
		if hold := r.Released.Sub(r.Produced); hold < ackDelay {
			t.Fatalf("%v held only %v with acks delayed %v", r.Kind, hold, ackDelay)
		}
		if r.LogAtRelease > r.Seq {
			ranOn++
		}
		if r.Kind != replication.OutputFrame && r.Kind != replication.OutputDiskWrite {
			continue // flushes and console bytes are not hashed into the log
		}
		h := replay.OutputHash(uint8(r.Kind), uint8(r.Device), r.Offset, r.Data)
		seqs := watch.outputs[h]
		k := used[h]
		if k >= len(seqs) {
			t.Fatalf("a %v of %d bytes left the primary, but the proxy saw no (further) log entry with its hash", r.Kind, len(r.Data))
		}
		used[h]++
		entry := seqs[k]
		if acked := watch.ackedBefore(r.Released); acked < entry {
			t.Fatalf("a %v left at %v; its exit was logged in entry %d, but the proxy had handed the primary acks only through %d by then",
				r.Kind, r.Released.Format(time.StampMicro), entry, acked)
		}
		traced++
	}
	t.Logf("%d outputs released (%d frames, %d disk writes, %d flushes, %d console pieces), each after its ack; %d frames and writes traced to their log entry and an ack the proxy passed on before they left; in %d the primary had logged more meanwhile; status then: %v",
		len(released), kinds[replication.OutputFrame], kinds[replication.OutputDiskWrite], kinds[replication.OutputDiskFlush], kinds[replication.OutputConsole], traced, ranOn, st)
	if kinds[replication.OutputFrame] < 20 || kinds[replication.OutputDiskWrite] == 0 || kinds[replication.OutputConsole] == 0 {
		t.Fatal("the traffic should have released at least 20 frames, disk writes and console output")
	}
	if ranOn == 0 {
		t.Fatal("the primary never logged anything while an output was held: it did not keep executing")
	}
}

// primaryProcess runs a primary as this process (spec
// "peer|image|storage|switch|arbiter|storage-server") until it is killed or
// its VM stops. With a storage server, the disks and the arbiter are the
// server's. SIGUSR1 arms a test hook: the next held disk write to be
// issued waits 15 s first (fencing test).
func primaryProcess(spec string) int {
	f := strings.Split(spec, "|")
	if len(f) != 6 {
		fmt.Fprintln(os.Stderr, "bad", primaryProcessEnv)
		return 2
	}
	cfg := instance.Config{
		Image: f[1], NetSocket: f[3], IP: "192.168.127.2/24", Disks: []string{"data"}, StorageDir: f[2],
		Append: "ftvm.workload=kv ftvm.port=7000", MemoryMiB: 128, Console: os.Stderr, StorageServer: f[5],
	}
	var arb arbiter.Arbiter
	var err error
	if f[5] != "" {
		arb, err = server.Dial(context.Background(), "unix", f[5])
	} else {
		arb, err = arbiter.OpenDir(f[4])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "primary:", err)
		return 1
	}
	var armed atomic.Bool
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			armed.Store(true)
		}
	}()
	_, err = replication.RunPrimary(context.Background(), replication.PrimaryConfig{
		Instance: cfg, Peer: "unix:" + f[0], Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "primary process",
		StatusEvery: 5 * time.Second,
		BeforeDiskRelease: func() {
			if armed.CompareAndSwap(true, false) {
				fmt.Fprintln(os.Stderr, "primary: test hook: holding a released disk write for 15 s")
				time.Sleep(15 * time.Second)
			}
		}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "primary:", err)
		return 1
	}
	return 0
}

// startPrimaryProcess runs a primary in a child process (one the test can
// SIGKILL or SIGSTOP); storageServer may be "". The child's stderr is
// logged if the test fails.
func (s *pairSetup) startPrimaryProcess(t testing.TB, arbDir, storageServer string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), primaryProcessEnv+"="+strings.Join([]string{s.logSock, s.inst.Image, s.storeDir, s.sock, arbDir, storageServer}, "|"))
	perr := &syncBuffer{}
	cmd.Stderr = perr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("the primary process's stderr (its console and log):\n%s", perr.String())
		}
	})
	return cmd, perr
}

// syncBuffer is a strings.Builder safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestFencedOldPrimaryHalts: the disks belong to a storage server, which
// also holds the arbiter's record. The primary has a released write on its
// way to the disk (a test hook holds it back) when it is paused (SIGSTOP).
// The backup finds it silent, claims generation 1 through the server, goes
// live (re-issuing the writes the primary may not have released) and
// serves the client. Resumed, the old primary's write carries generation 0:
// the server refuses it, and the old primary halts naming the generations.
func TestFencedOldPrimaryHalts(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	srv := startStorageServer(t, s.storeDir)
	srvSock := srv.sock
	client, err := server.Dial(context.Background(), "unix", srvSock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s.inst.StorageServer, s.inst.Pair = srvSock, "kv"
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(t, bctx, replication.BackupConfig{Log: pairLog, Arbiter: client, Pair: "kv", Owner: "the test's backup"})
	cmd, perr := s.startPrimaryProcess(t, "", srvSock)

	c := dialKVClient(t, s.fwd)
	defer c.conn.Close()
	for i := 0; i < 10; i++ {
		c.mixed(t, i)
	}
	// Arm the hook, then PUT: the write is acked by the backup and held
	// back in the primary's releaser; its answer waits behind it.
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	answered := make(chan string, 1)
	go func() { answered <- c.do(t, "PUT fenced-key v1", "OK ", false) }()
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(perr.String(), "holding a released disk write") {
		if time.Now().After(deadline) {
			t.Fatal("the primary never held a released write back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	select {
	case line := <-answered:
		t.Logf("the PUT held by the paused primary was answered by the live backup %v after the pause: %q", time.Since(stopped).Round(time.Millisecond), line)
	case <-time.After(3 * time.Minute):
		t.Fatal("the PUT was never answered")
	}
	c.puts["fenced-key"] = "v1"
	c.do(t, "PUT fenced-key v2", "OK ", false)
	c.puts["fenced-key"] = "v2"
	rec, err := client.Read(context.Background(), "kv")
	if err != nil || rec.Generation != 1 || rec.Owner != "the test's backup" {
		t.Fatalf("record %v, %v; want generation 1 owned by the backup", rec, err)
	}
	// Resume the old primary: its held write (generation 0) is refused.
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err == nil {
			t.Fatal("the old primary exited 0 after being fenced")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the old primary kept running after it was fenced")
	}
	out := perr.String()
	fenced := strings.Contains(out, "with generation 0 refused") && strings.Contains(out, "generation 1")
	if !fenced {
		t.Fatalf("the old primary did not report its write refused for generation 0 (the record is at 1):\n%s", lastLines(out, 30))
	}
	c.readBack(t)
	bcancel()
	if b := <-backup; b.err != nil || !b.res.WentLive {
		t.Fatalf("backup: %v", b.err)
	}
	t.Logf("old primary fenced: %s", lastLines(out, 3))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestPlannedHandover: a planned switchover under client traffic. The
// primary stops at an exit, waits until the backup has everything and all
// its outputs left, and hands over; the backup claims the record and goes
// live; the client, on the same connection, loses nothing.
func TestPlannedHandover(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	arb, err := arbiter.OpenDir(filepath.Join(t.TempDir(), "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	backup := s.startBackupWith(t, bctx, replication.BackupConfig{Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "backup", StatusEvery: 2 * time.Second})
	pr := s.startPrimary(t, replication.PrimaryConfig{Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "primary"})
	c := dialKVClient(t, s.fwd)
	defer c.conn.Close()
	for i := 0; i < 10; i++ {
		c.mixed(t, i)
	}
	t.Cleanup(func() {
		if t.Failed() {
			bcancel()
			b := <-backup
			t.Logf("backup after the failure: %v; %+v", b.err, b.res)
		}
	})
	asked := time.Now()
	pr.p.Handover()
	pd := pr.wait()
	if pd.err != nil || !pd.res.HandedOver || pd.res.Final.Outputs.HeldOutputs != 0 {
		t.Fatalf("primary after the handover: %v (handed over %v, held %d)", pd.err, pd.res != nil && pd.res.HandedOver, pd.res.Final.Outputs.HeldOutputs)
	}
	c.do(t, "ECHO after-the-handover", "after-the-handover", true)
	pause := time.Since(asked)
	for i := 10; i < 20; i++ {
		c.mixed(t, i)
	}
	c.readBack(t)
	rec, err := arb.Read(context.Background(), "kv")
	if err != nil || rec.Generation != 1 || rec.Owner != "backup" {
		t.Fatalf("record %v, %v; want generation 1 owned by the backup", rec, err)
	}
	bcancel()
	b := <-backup
	if b.err != nil || !b.res.WentLive || b.res.PrimaryErr != nil {
		t.Fatalf("backup: %v (went live %v, primary error %v)", b.err, b.res != nil && b.res.WentLive, b.res.PrimaryErr)
	}
	t.Logf("handed over; first answer %v after asking; backup: %v; %d requests", pause.Round(time.Millisecond), b.res.Failover, c.ops)
}

// backupProcess runs a backup as this process (spec "listen|image|storage")
// until the log ends or it is killed.
func backupProcess(spec string) int {
	f := strings.Split(spec, "|")
	if len(f) != 4 {
		fmt.Fprintln(os.Stderr, "bad", backupProcessEnv)
		return 2
	}
	cfg := instance.Config{
		Image: f[1], NetSocket: f[3], IP: "192.168.127.2/24", Disks: []string{"data"}, StorageDir: f[2],
		Append: "ftvm.workload=kv ftvm.port=7000", MemoryMiB: 128,
	}
	_, err := replication.RunBackup(context.Background(), replication.BackupConfig{
		Instance: cfg, Listen: "unix:" + f[0], Log: pairLog, StatusEvery: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "backup:", err)
		return 1
	}
	return 0
}

// startBackupProcess runs a backup in a child process (one the test can
// SIGKILL) and returns once it listens.
func (s *pairSetup) startBackupProcess(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), backupProcessEnv+"="+strings.Join([]string{s.logSock, s.inst.Image, s.storeDir, s.sock}, "|"))
	var berr strings.Builder
	cmd.Stderr = &berr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(s.logSock); err == nil {
			return cmd
		}
		if i > 600 {
			t.Fatalf("backup process never listened: %s", berr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKilledBackupPrimaryWinsTheArbiter: with an arbiter, a primary whose
// backup is SIGKILLed claims the pair's record, wins generation 1, lets its
// held outputs out (the request sent after the kill is answered on the
// same connection) and runs on unprotected; a clean stop then loses nothing.
func TestKilledBackupPrimaryWinsTheArbiter(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	arb, err := arbiter.OpenDir(filepath.Join(t.TempDir(), "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := s.startBackupProcess(t)
	pr := s.startPrimary(t, replication.PrimaryConfig{Log: pairLog, Arbiter: arb, Pair: "kv", Owner: "the test's primary"})
	c := dialKVClient(t, s.fwd)
	defer c.conn.Close()
	for i := 0; i < 10; i++ {
		c.mixed(t, i)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// Sent right after the kill: its answer is held until the primary wins.
	c.do(t, "ECHO after-the-backup-died", "after-the-backup-died", true)
	answered := time.Since(killed)
	for i := 10; i < 20; i++ {
		c.mixed(t, i)
	}
	st := pr.p.Status()
	t.Logf("backup killed; answered %v later; status: %v", answered.Round(time.Millisecond), st)
	if st.Generation != 1 || !strings.HasPrefix(st.State, "unprotected") {
		t.Fatalf("status after winning: generation %d, state %q", st.Generation, st.State)
	}
	rec, err := arb.Read(context.Background(), "kv")
	if err != nil || rec.Generation != 1 || rec.Owner != "the test's primary" {
		t.Fatalf("arbiter record %v, %v; want generation 1 owned by the primary", rec, err)
	}
	c.readBack(t)
	pr.cancel()
	pd := pr.wait()
	if pd.err != nil || pd.res.Final.Outputs.HeldOutputs != 0 {
		t.Fatalf("primary after a clean stop, unprotected: %v (held %d)", pd.err, pd.res.Final.Outputs.HeldOutputs)
	}
}

// TestKilledBackupLeavesPrimaryHoldingOutputs SIGKILLs the backup process:
// the primary notices, keeps running (no crash), holds every output (a
// request gets no answer) and says so in its status.
func TestKilledBackupLeavesPrimaryHoldingOutputs(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	cmd := s.startBackupProcess(t)
	// The kill is seen at once (the connection resets); the silence timeout
	// stays wide so a loaded machine cannot trip it before the kill.
	pr := s.startPrimary(t, replication.PrimaryConfig{Log: pairLog})
	c := dialKVClient(t, s.fwd)
	defer c.conn.Close()
	for i := 0; i < 10; i++ {
		c.mixed(t, i)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.HasPrefix(pr.p.Status().State, "backup lost") {
		if time.Now().After(deadline) {
			t.Fatalf("primary did not notice the killed backup: %v", pr.p.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	noticed := time.Since(killed)
	// A request now gets no answer: its reply is an output nobody acks.
	c.conn.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c.conn, "ECHO after-the-backup-died\n")
	if line, err := c.r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %q, %v with no backup to ack its log; want the read to time out (no answer, connection open)", line, err)
	}
	select {
	case <-pr.finished:
		t.Fatalf("primary stopped after the backup died: %v %v", pr.result.res, pr.result.err)
	default:
	}
	st := pr.p.Status()
	t.Logf("backup killed; the primary noticed in %v; status: %v", noticed.Round(time.Millisecond), st)
	if st.Outputs.HeldOutputs == 0 || st.BackupErr == nil || !strings.Contains(st.String(), "outputs held") {
		t.Fatalf("status should say outputs are held and why: %v", st)
	}
	pr.cancel()
	cancelled := time.Now()
	select {
	case <-pr.finished:
	case <-time.After(15 * time.Second):
		buf := make([]byte, 1<<20)
		t.Logf("the primary has not stopped 15 s after cancel; goroutines:\n%s", buf[:runtime.Stack(buf, true)])
	}
	pd := pr.wait()
	t.Logf("the primary stopped %v after cancel: %v", time.Since(cancelled).Round(time.Millisecond), pd.err)
	// Stopping with outputs held loses them: the primary must say so.
	var held *replication.HeldOutputsError
	if !errors.As(pd.err, &held) || held.Stats.HeldOutputs == 0 || !strings.Contains(pd.err.Error(), "the backup was lost") {
		t.Fatalf("primary after cancel: %v, want a HeldOutputsError naming the lost backup", pd.err)
	}
}

// TestBackupRefusesAnotherMachine: a primary booting another machine (here
// twice the memory) is refused by the backup before it boots anything, with
// a sentence naming the difference; the same host's CPUID tables matched.
func TestBackupRefusesAnotherMachine(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	s := newPairSetup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	backup := s.startBackup(t, ctx, pairLog)
	cfg := replication.PrimaryConfig{Instance: s.inst, Peer: "unix:" + s.logSock, Log: pairLog}
	cfg.Instance.MemoryMiB = 256
	p, err := replication.NewPrimary(ctx, cfg)
	if err == nil {
		defer p.Close()
	}
	r := <-backup
	want := "the primary runs another machine: memory differs: primary 256 MiB, backup 128 MiB; start the backup with the same image"
	if r.err == nil || !strings.Contains(r.err.Error(), want) {
		t.Fatalf("backup: %v, want %q", r.err, want)
	}
	t.Logf("backup refused: %v", r.err)
}
