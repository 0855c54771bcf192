package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/virtio"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
	"github.com/ftvm/ftvm/storage/arbiter/arbitertest"
)

// A served disk is what the VMM hands to virtio-blk, as a storage.Disk is.
var _ virtio.BlockBackend = (*Disk)(nil)

// helperSocketEnv tells a race helper process which server to claim through.
const helperSocketEnv = "FTVM_STORAGE_SERVER_TEST_SOCKET"

// writerSocketEnv makes the test binary a writer process (see writeUntilFenced).
const writerSocketEnv = "FTVM_STORAGE_SERVER_TEST_WRITER"

func TestMain(m *testing.M) {
	arbitertest.HelperMain(func() (arbiter.Arbiter, error) {
		return Dial(context.Background(), "unix", os.Getenv(helperSocketEnv))
	})
	if socket := os.Getenv(writerSocketEnv); socket != "" {
		os.Exit(writeUntilFenced(socket))
	}
	os.Exit(m.Run())
}

// writeUntilFenced is an old primary: it writes "A" blocks at offset 0
// with generation 1 until a write fails, and prints the failure.
func writeUntilFenced(socket string) int {
	c, err := Dial(context.Background(), "unix", socket)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	d, _, err := c.OpenDisk(context.Background(), "kv", "vda", 1)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	block := bytes.Repeat([]byte("A"), 512)
	for i := 0; ; i++ {
		if _, err := d.WriteAt(block, 0); err != nil {
			fmt.Println("stopped:", err)
			return 0
		}
		if i == 0 {
			fmt.Println("writing")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFencingStoppedProcess: an old primary process writing in a loop is
// stopped (SIGSTOP) at an arbitrary point, perhaps with a write sent; the
// backup claims and writes; the old primary, continued, is refused at its
// next write and names both generations; the disk holds the backup's data.
func TestFencingStoppedProcess(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ctx := context.Background()
	b := dial(t, ts)
	if _, err := b.Claim(ctx, "kv", "primary A", 0); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), writerSocketEnv+"="+ts.socket)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	out := bufio.NewScanner(stdout)
	if !out.Scan() || out.Text() != "writing" {
		t.Fatalf("writer: %q", out.Text())
	}
	time.Sleep(20 * time.Millisecond) // some writes land before the stop
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	rec, err := b.Claim(ctx, "kv", "backup B", 1)
	if err != nil {
		t.Fatal(err)
	}
	db := openDisk(t, b, rec.Generation)
	if _, err := db.WriteAt(bytes.Repeat([]byte("B"), 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	said := make(chan string, 1)
	go func() {
		out.Scan()
		said <- out.Text()
	}()
	var got string
	select {
	case got = <-said:
	case <-time.After(30 * time.Second):
		t.Fatal("the old primary still writes 30 s after the claim")
	}
	if !strings.Contains(got, "generation 1 refused") || !strings.Contains(got, `generation 2 owned by "backup B"`) {
		t.Fatalf("old primary's write after the claim: %s", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, db, 0, 512); !bytes.Equal(got, bytes.Repeat([]byte("B"), 512)) {
		t.Fatalf("disk holds %q..., want the backup's data", got[:8])
	}
}

const diskSize = 1 << 20

// testServer is a running server on a fresh storage directory with one
// disk, "vda", of pair "kv".
type testServer struct {
	dir, socket string
	srv         *Server
	stop        func()
}

// startServer serves dir on a socket; prepare may set test hooks before
// the server runs.
func startServer(t testing.TB, dir string, prepare func(*Server)) *testServer {
	t.Helper()
	store, err := storage.OpenWithLogger(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Metadata("vda"); errors.Is(err, storage.ErrNotFound) {
		if _, err := store.CreateDisk(context.Background(), "vda", diskSize, storage.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	arb, err := arbiter.OpenDir(filepath.Join(dir, "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Store: store, Arbiter: arb, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(srv)
	}
	socket := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, socket) }()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			break
		} else if i == 500 {
			t.Fatalf("server did not listen: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ts := &testServer{dir: dir, socket: socket, srv: srv}
	stopped := false
	ts.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

func dial(t *testing.T, ts *testServer) *Client {
	t.Helper()
	c, err := Dial(context.Background(), "unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func openDisk(t *testing.T, c *Client, gen uint64) *Disk {
	t.Helper()
	d, _, err := c.OpenDisk(context.Background(), "kv", "vda", gen)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func readBack(t *testing.T, d *Disk, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if _, err := d.ReadAt(p, off); err != nil {
		t.Fatal(err)
	}
	return p
}

// releaseOnFailure returns the function that lets a held request go, and
// makes sure it runs before the server stops even if the test fails first
// (the server waits for the held request).
func releaseOnFailure(t *testing.T, release chan struct{}) func() {
	var once sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	t.Cleanup(letGo)
	return letGo
}

// TestFencingDelayedWrite: writer A (generation 1) has a write in flight,
// held inside the server before its generation check; B claims generation
// 2 and writes. A's write, let go, is refused naming both generations;
// the disk holds B's data.
func TestFencingDelayedWrite(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	ts := startServer(t, t.TempDir(), func(s *Server) {
		s.beforeFence = func(req *request) {
			if req.op == opWrite && req.gen == 1 && bytes.HasPrefix(req.data, []byte("A")) {
				close(arrived)
				<-release
			}
		}
	})
	letGo := releaseOnFailure(t, release)
	ctx := context.Background()
	a, b := dial(t, ts), dial(t, ts)
	if r, err := a.Claim(ctx, "kv", "primary A", 0); err != nil || r.Generation != 1 {
		t.Fatalf("A's claim: %v, %v", r, err)
	}
	da := openDisk(t, a, 1)
	if _, err := da.WriteAt(bytes.Repeat([]byte("a"), 512), 4096); err != nil {
		t.Fatalf("A's write before the failover: %v", err)
	}
	aWrite := make(chan error, 1)
	go func() {
		_, err := da.WriteAt(bytes.Repeat([]byte("A"), 512), 0)
		aWrite <- err
	}()
	<-arrived

	r, err := b.Claim(ctx, "kv", "backup B", 1)
	if err != nil || r.Generation != 2 || r.Owner != "backup B" {
		t.Fatalf("B's claim: %v, %v", r, err)
	}
	db := openDisk(t, b, r.Generation)
	if _, err := db.WriteAt(bytes.Repeat([]byte("B"), 512), 0); err != nil {
		t.Fatalf("B's write: %v", err)
	}
	letGo()
	err = <-aWrite
	var fenced *FencedError
	if !errors.As(err, &fenced) || !errors.Is(err, ErrFenced) || fenced.Writer != 1 || fenced.Current.Generation != 2 || fenced.Current.Owner != "backup B" {
		t.Fatalf("A's delayed write: %v; want it fenced by generation 2", err)
	}
	for _, want := range []string{"generation 1 refused", `generation 2 owned by "backup B"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("fenced error %q lacks %q", err, want)
		}
	}
	if err := da.Flush(); !errors.Is(err, ErrFenced) {
		t.Errorf("A's flush after the claim: %v", err)
	}
	if got := readBack(t, db, 0, 512); !bytes.Equal(got, bytes.Repeat([]byte("B"), 512)) {
		t.Fatalf("disk holds %q..., want B's data", got[:8])
	}
	// A reads what B wrote (reads are not fenced; A is about to halt).
	if got := readBack(t, da, 0, 4); string(got) != "BBBB" {
		t.Fatalf("A reads %q", got)
	}
	if err := db.Flush(); err != nil {
		t.Fatalf("B's flush: %v", err)
	}
}

// TestClaimWaitsForAdmittedWrite: a write that passed its generation check
// and is held inside the fence lands before a claim completes; the new
// owner's write then wins.
func TestClaimWaitsForAdmittedWrite(t *testing.T) {
	inside, release := make(chan struct{}), make(chan struct{})
	ts := startServer(t, t.TempDir(), func(s *Server) {
		s.insideFence = func(req *request) {
			if req.op == opWrite && req.gen == 1 {
				close(inside)
				<-release
			}
		}
	})
	letGo := releaseOnFailure(t, release)
	ctx := context.Background()
	a, b := dial(t, ts), dial(t, ts)
	if _, err := a.Claim(ctx, "kv", "primary A", 0); err != nil {
		t.Fatal(err)
	}
	da := openDisk(t, a, 1)
	aWrite := make(chan error, 1)
	go func() {
		_, err := da.WriteAt(bytes.Repeat([]byte("A"), 512), 0)
		aWrite <- err
	}()
	<-inside
	claimed := make(chan error, 1)
	go func() {
		_, err := b.Claim(ctx, "kv", "backup B", 1)
		claimed <- err
	}()
	select {
	case err := <-claimed:
		t.Fatalf("the claim completed (%v) while a write of the old generation was in progress", err)
	case <-time.After(100 * time.Millisecond):
	}
	// Nor has the claim reached the arbiter: the record changes only when
	// no write of the old generation is in progress.
	arb, err := arbiter.OpenDir(filepath.Join(ts.dir, "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := arb.Read(ctx, "kv"); err != nil || rec.Generation != 1 {
		t.Fatalf("record while the old write is held: %v, %v", rec, err)
	}
	letGo()
	if err := <-aWrite; err != nil {
		t.Fatalf("admitted write: %v", err)
	}
	if err := <-claimed; err != nil {
		t.Fatalf("claim: %v", err)
	}
	db := openDisk(t, b, 2)
	if _, err := db.WriteAt(bytes.Repeat([]byte("B"), 512), 0); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, db, 0, 512); !bytes.Equal(got, bytes.Repeat([]byte("B"), 512)) {
		t.Fatalf("disk holds %q..., want B's data", got[:8])
	}
}

// TestDirectClaimAnnounced: a claim made at the arbiter, not through the
// server, fences the old writer from the moment the new owner opens its
// disk with the new generation.
func TestDirectClaimAnnounced(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ctx := context.Background()
	a := dial(t, ts)
	da := openDisk(t, a, 0)
	if _, err := da.WriteAt([]byte("old"), 0); err != nil {
		t.Fatalf("write at generation 0 of a never-claimed pair: %v", err)
	}
	arb, err := arbiter.OpenDir(filepath.Join(ts.dir, "arbiter"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := arb.Claim(ctx, "kv", "backup elsewhere", 0); err != nil {
		t.Fatal(err)
	}
	_, rec, err := dial(t, ts).OpenDisk(ctx, "kv", "vda", 1)
	if err != nil || rec.Generation != 1 {
		t.Fatalf("new owner's open: %v, %v", rec, err)
	}
	if _, err := da.WriteAt([]byte("stale"), 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer after the announced claim: %v", err)
	}
	// A generation nobody claimed is refused, not adopted.
	da.SetGeneration(7)
	if _, err := da.WriteAt([]byte("ahead"), 0); !errors.Is(err, arbiter.ErrAhead) {
		t.Fatalf("write ahead of the record: %v", err)
	}
}

// TestRestartKeepsRecord: the record outlives the server process; a
// writer of an old generation is refused by the new server too.
func TestRestartKeepsRecord(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	ctx := context.Background()
	c := dial(t, ts)
	for g := uint64(0); g < 3; g++ {
		if _, err := c.Claim(ctx, "kv", "side "+string(rune('A'+g)), g); err != nil {
			t.Fatal(err)
		}
	}
	d := openDisk(t, c, 3)
	if _, err := d.WriteAt([]byte("gen3"), 100); err != nil {
		t.Fatal(err)
	}
	ts.stop()

	ts2 := startServer(t, dir, nil)
	c2 := dial(t, ts2)
	rec, err := c2.Read(ctx, "kv")
	if err != nil || rec.Generation != 3 || rec.Owner != "side C" {
		t.Fatalf("record after restart: %v, %v", rec, err)
	}
	old := openDisk(t, c2, 2)
	if _, err := old.WriteAt([]byte("gen2"), 100); !errors.Is(err, ErrFenced) {
		t.Fatalf("generation 2 write after restart: %v", err)
	}
	if got := readBack(t, old, 100, 4); string(got) != "gen3" {
		t.Fatalf("disk after restart holds %q", got)
	}
	// The client that outlived the first server redials on its own.
	if _, err := d.WriteAt([]byte("GEN3"), 100); err != nil {
		t.Fatalf("write through a client that saw the restart: %v", err)
	}
}

// TestClaimRaceThroughServer runs the arbiter race through the server:
// goroutines sharing one client and processes each with their own.
func TestClaimRaceThroughServer(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	arbitertest.Race(t, dial(t, ts), arbitertest.Config{
		Pair: "kv", Goroutines: 4, Processes: 4, Rounds: 20,
		HelperEnv: []string{helperSocketEnv + "=" + ts.socket},
	})
}

// TestLargeIO: reads and writes beyond MaxIO are split and come back whole.
func TestLargeIO(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	d := openDisk(t, dial(t, ts), 0)
	p := make([]byte, MaxIO+MaxIO/2+512)
	for i := range p {
		p[i] = byte(i * 7)
	}
	if n, err := d.WriteAt(p[:diskSize-4096], 4096); err != nil || n != diskSize-4096 {
		t.Fatalf("large write: %d, %v", n, err)
	}
	if got := readBack(t, d, 4096, diskSize-4096); !bytes.Equal(got, p[:diskSize-4096]) {
		t.Fatal("large read differs from the write")
	}
	if _, err := d.WriteAt(p[:2], diskSize-1); !errors.Is(err, storage.ErrOutOfRange) {
		t.Fatalf("write across the end: %v", err)
	}
	if d.Size() != diskSize || d.ID() == "" || d.Name() != "vda" {
		t.Fatalf("size %d id %q name %q", d.Size(), d.ID(), d.Name())
	}
}

// unreachableArbiter answers nothing, as an etcd cut off would.
type unreachableArbiter struct{}

func (unreachableArbiter) Claim(context.Context, string, string, uint64) (arbiter.Record, error) {
	return arbiter.Record{}, arbiter.ErrUnreachable
}

func (unreachableArbiter) Read(context.Context, string) (arbiter.Record, error) {
	return arbiter.Record{}, arbiter.ErrUnreachable
}

// TestUnreachable: a server whose arbiter does not answer admits no write
// (it cannot know the generation) and says why; a client whose server is
// gone says that.
func TestUnreachable(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, func(s *Server) { s.arb = unreachableArbiter{} })
	ctx := context.Background()
	c := dial(t, ts)
	if _, _, err := c.OpenDisk(ctx, "kv", "vda", 0); !errors.Is(err, arbiter.ErrUnreachable) {
		t.Fatalf("open with the arbiter unreachable: %v", err)
	}
	if _, err := c.Claim(ctx, "kv", "backup", 0); !errors.Is(err, arbiter.ErrUnreachable) {
		t.Fatalf("claim with the arbiter unreachable: %v", err)
	}
	d := &Disk{c: c, pair: "kv", name: "vda", size: diskSize}
	if _, err := d.WriteAt([]byte("x"), 0); !errors.Is(err, arbiter.ErrUnreachable) {
		t.Fatalf("write with the arbiter unreachable: %v", err)
	}
	ts.stop()
	if _, err := c.Claim(ctx, "kv", "backup", 0); !errors.Is(err, arbiter.ErrUnreachable) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("claim with the server gone: %v", err)
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("read with the server gone: %v", err)
	}
	if _, err := Dial(ctx, "unix", ts.socket); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("dial with the server gone: %v", err)
	}
}

// rawConn sends hand-made frames.
func rawConn(t *testing.T, ts *testServer) net.Conn {
	t.Helper()
	conn, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn
}

func rawReply(t *testing.T, conn net.Conn, op byte) *reply {
	t.Helper()
	body, err := readFrame(conn, nil)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	rep, err := decodeReply(body, op)
	if err != nil {
		t.Fatalf("undecodable reply: %v", err)
	}
	return rep
}

// TestHostileRequests: every malformed or out-of-bounds request gets an
// error reply and changes nothing on the disk; the connection still
// serves a good request afterwards.
func TestHostileRequests(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	good := func(req request) []byte { return encodeRequest(nil, &req) }
	reframe := func(frame []byte) []byte { return frameEnd(frame) }
	w := func(off uint64, n int) []byte {
		return good(request{op: opWrite, tag: 9, pair: "kv", name: "vda", off: off, data: bytes.Repeat([]byte{0xEE}, n)})
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		code  byte
	}{
		{"unknown op", good(request{op: 99, tag: 9, pair: "kv"}), codeBadRequest},
		{"truncated body", reframe(good(request{op: opRead, tag: 9, pair: "kv", name: "vda", n: 1})[:10]), codeBadRequest},
		{"trailing bytes", reframe(append(good(request{op: opRecord, tag: 9, pair: "kv"}), 0)), codeBadRequest},
		{"path in disk name", good(request{op: opRead, tag: 9, pair: "kv", name: "../vda", n: 1}), codeBadRequest},
		{"empty pair", good(request{op: opRecord, tag: 9}), codeBadRequest},
		{"owner with newline", good(request{op: opClaim, tag: 9, pair: "kv", name: "a\nb"}), codeBadRequest},
		{"read of 0", good(request{op: opRead, tag: 9, pair: "kv", name: "vda"}), codeBadRequest},
		{"read over MaxIO", good(request{op: opRead, tag: 9, pair: "kv", name: "vda", n: MaxIO + 1}), codeBadRequest},
		{"read past the end", good(request{op: opRead, tag: 9, pair: "kv", name: "vda", off: diskSize - 1, n: 2}), codeOutOfRange},
		{"read at max offset", good(request{op: opRead, tag: 9, pair: "kv", name: "vda", off: 1<<64 - 1, n: 2}), codeBadRequest},
		{"write past the end", w(diskSize-511, 512), codeOutOfRange},
		{"write at the size", w(diskSize, 1), codeOutOfRange},
		{"write wrapping", w(1<<64-256, 512), codeBadRequest},
		{"write at MaxSize", w(uint64(storage.MaxSize), 512), codeOutOfRange},
		{"empty write", w(0, 0), codeBadRequest},
		{"unknown disk", good(request{op: opInfo, tag: 9, pair: "kv", name: "nope"}), codeNotFound},
		{"claim from the future", good(request{op: opClaim, tag: 9, pair: "kv", name: "x", gen: 5}), codeAhead},
	} {
		conn := rawConn(t, ts)
		if _, err := conn.Write(tc.frame); err != nil {
			t.Fatal(err)
		}
		if rep := rawReply(t, conn, 0); rep.status != tc.code || rep.msg == "" {
			t.Errorf("%s: status %d (%q), want %d", tc.name, rep.status, rep.msg, tc.code)
		}
		if _, err := conn.Write(good(request{op: opRecord, tag: 10, pair: "kv"})); err != nil {
			t.Fatal(err)
		}
		if rep := rawReply(t, conn, opRecord); rep.status != codeOK || rep.tag != 10 {
			t.Errorf("%s: the next request got status %d tag %d", tc.name, rep.status, rep.tag)
		}
	}
	// A disk of one pair is not another's.
	conn := rawConn(t, ts)
	conn.Write(good(request{op: opInfo, tag: 1, pair: "kv", name: "vda"}))
	rawReply(t, conn, opInfo)
	conn.Write(good(request{op: opWrite, tag: 2, pair: "other", name: "vda", data: []byte("x")}))
	if rep := rawReply(t, conn, opWrite); rep.status != codeBadRequest || !strings.Contains(rep.msg, `in use by pair "kv"`) {
		t.Errorf("write under another pair: %d %q", rep.status, rep.msg)
	}

	// Frame lengths out of bounds: an error reply, then the connection closes.
	for _, n := range []uint32{0, maxFrame + 1, 1<<32 - 1} {
		conn := rawConn(t, ts)
		conn.Write([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
		if rep := rawReply(t, conn, 0); rep.status != codeBadRequest {
			t.Errorf("frame length %d: status %d", n, rep.status)
		}
		if _, err := readFrame(conn, nil); !errors.Is(err, io.EOF) {
			t.Errorf("frame length %d: connection not closed: %v", n, err)
		}
	}
	d := openDisk(t, dial(t, ts), 0)
	if got := readBack(t, d, 0, diskSize); !bytes.Equal(got, make([]byte, diskSize)) {
		t.Fatalf("a refused request wrote to the disk (byte %d)", bytes.IndexFunc(got, func(r rune) bool { return r != 0 }))
	}
	if fi, err := os.Stat(filepath.Join(ts.dir, "vda.img")); err != nil || fi.Size() != diskSize {
		t.Fatalf("image file: %v, %v", fi, err)
	}
}

// TestRecordNeverGoesBack: a record reset at the arbiter (its files or key
// deleted by hand) does not re-admit a fenced writer.
func TestRecordNeverGoesBack(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ctx := context.Background()
	c := dial(t, ts)
	for g := uint64(0); g < 2; g++ {
		if _, err := c.Claim(ctx, "kv", "side", g); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(filepath.Join(ts.dir, "arbiter", "kv")); err != nil {
		t.Fatal(err)
	}
	if rec, err := c.Read(ctx, "kv"); err != nil || rec.Generation != 2 {
		t.Fatalf("record after the reset: %v, %v", rec, err)
	}
	old := openDisk(t, c, 1)
	if _, err := old.WriteAt([]byte("x"), 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("generation 1 write after the reset: %v", err)
	}
	old.SetGeneration(2)
	if _, err := old.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("generation 2 write after the reset: %v", err)
	}
}

// TestEtcdArbiter: the deployment across machines. The server keeps the
// records in etcd; a side that claims at etcd directly fences the old
// writer once it announces its generation; with etcd gone, claims say so
// and writes of the current generation go on.
func TestEtcdArbiter(t *testing.T) {
	endpoint, stopEtcd := arbitertest.StartEtcd(t)
	newEtcd := func(timeout time.Duration) *arbiter.Etcd {
		e, err := arbiter.NewEtcd(arbiter.EtcdConfig{Endpoints: []string{endpoint}, RequestTimeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	ts := startServer(t, t.TempDir(), func(s *Server) { s.arb = newEtcd(5 * time.Second) })
	ctx := context.Background()
	a := dial(t, ts)
	if _, err := a.Claim(ctx, "kv", "primary A", 0); err != nil {
		t.Fatal(err)
	}
	da := openDisk(t, a, 1)
	if _, err := da.WriteAt([]byte("A"), 0); err != nil {
		t.Fatal(err)
	}
	rec, err := newEtcd(30*time.Second).Claim(ctx, "kv", "backup B", 1)
	if err != nil {
		t.Fatal(err)
	}
	db := openDisk(t, dial(t, ts), rec.Generation)
	if _, err := da.WriteAt([]byte("A"), 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer after a claim at etcd, announced: %v", err)
	}
	stopEtcd()
	if _, err := a.Claim(ctx, "kv", "primary A", 2); !errors.Is(err, arbiter.ErrUnreachable) {
		t.Fatalf("claim with etcd gone: %v", err)
	}
	if _, err := db.WriteAt([]byte("B"), 0); err != nil {
		t.Fatalf("current generation's write with etcd gone: %v", err)
	}
	if _, err := da.WriteAt([]byte("A"), 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer with etcd gone: %v", err)
	}
	if got := readBack(t, db, 0, 1); string(got) != "B" {
		t.Fatalf("disk holds %q", got)
	}
}
