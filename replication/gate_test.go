package replication

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAcks is a log channel sender's ack side under the test's control.
type fakeAcks struct {
	mu      sync.Mutex
	acked   uint64
	waiters map[uint64]chan struct{}
	done    chan struct{}
}

func newFakeAcks() *fakeAcks {
	return &fakeAcks{waiters: map[uint64]chan struct{}{}, done: make(chan struct{})}
}

func (f *fakeAcks) AckNotify(seq uint64) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := make(chan struct{})
	if seq <= f.acked {
		close(c)
		return c
	}
	if w, ok := f.waiters[seq]; ok {
		return w
	}
	f.waiters[seq] = c
	return c
}

func (f *fakeAcks) ack(seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acked = seq
	for s, c := range f.waiters {
		if s <= seq {
			close(c)
			delete(f.waiters, s)
		}
	}
}

func (f *fakeAcks) AckedThrough() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acked
}
func (f *fakeAcks) Done() <-chan struct{} { return f.done }

type memDisk struct {
	mu      sync.Mutex
	data    []byte
	flushes int
}

func (d *memDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(d.data[off:], p), nil
}
func (d *memDisk) Flush() error {
	d.mu.Lock()
	d.flushes++
	d.mu.Unlock()
	return nil
}
func (d *memDisk) snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.data)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGateReleasesOnlyAckedOutputsInOrder: outputs sealed with seq N leave
// only once N is acked, in the order produced; an unsealed output never
// leaves.
func TestGateReleasesOnlyAckedOutputsInOrder(t *testing.T) {
	acks := newFakeAcks()
	var mu sync.Mutex
	var sent []string
	var rel []Released
	g := newGate(acks, func(f []byte) {
		mu.Lock()
		sent = append(sent, string(f))
		mu.Unlock()
	}, func(r Released) {
		mu.Lock()
		rel = append(rel, r)
		mu.Unlock()
	})
	disk := &memDisk{data: make([]byte, 64)}
	g.disks = []blockWriter{disk}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.run(ctx)

	g.add(ctx, output{kind: OutputFrame, data: []byte("a")})
	g.add(ctx, output{kind: OutputDiskWrite, off: 8, data: []byte("WRITE")})
	g.seal(3)
	g.add(ctx, output{kind: OutputFrame, data: []byte("b")})
	g.add(ctx, output{kind: OutputDiskFlush})
	g.seal(5)
	g.add(ctx, output{kind: OutputFrame, data: []byte("never sealed")})

	time.Sleep(20 * time.Millisecond)
	if st := g.Stats(); st.ReleasedFrames != 0 || st.HeldOutputs != 5 {
		t.Fatalf("before any ack: %+v", st)
	}
	acks.ack(4)
	waitUntil(t, "the first group", func() bool { return g.Stats().ReleasedWrites == 1 })
	if got := disk.snapshot()[8:13]; string(got) != "WRITE" {
		t.Fatalf("disk after release: %q", got)
	}
	mu.Lock()
	if len(sent) != 1 || sent[0] != "a" {
		t.Fatalf("after ack 4 sent %q, want [a]", sent)
	}
	mu.Unlock()
	acks.ack(5)
	waitUntil(t, "the second group", func() bool { return g.Stats().ReleasedFlushes == 1 })
	time.Sleep(10 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 2 || sent[1] != "b" {
		t.Fatalf("sent %q, want [a b]", sent)
	}
	for _, r := range rel {
		if r.AckedThrough < r.Seq || r.Released.Before(r.Produced) {
			t.Fatalf("released before its ack: %+v", r)
		}
	}
	if st := g.Stats(); st.HeldOutputs != 1 {
		t.Fatalf("the unsealed output should still be held: %+v", st)
	}
}

// TestGatedReadsSeeHeldWrites: a read of a disk returns the held writes on
// top of what is on the disk, the latest write winning.
func TestGatedReadsSeeHeldWrites(t *testing.T) {
	disk := bytes.Repeat([]byte{'.'}, 32)
	held := []output{
		{kind: OutputDiskWrite, off: 4, data: []byte("aaaa")},
		{kind: OutputDiskFlush},
		{kind: OutputDiskWrite, off: 6, data: []byte("bbbb")},
		{kind: OutputDiskWrite, off: 30, data: []byte("cccc")}, // past the read
	}
	p := bytes.Clone(disk[2:12])
	overlay(p, 2, held)
	if string(p) != "..aabbbb.." {
		t.Fatalf("overlay: %q", p)
	}
}

// TestGateLostBackupPausesOutputs: once the log channel fails nothing more
// leaves and the guest waits at its next output until ctx ends.
func TestGateLostBackupPausesOutputs(t *testing.T) {
	acks := newFakeAcks()
	g := newGate(acks, func([]byte) { t.Error("a frame left after the backup was lost") }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go g.run(ctx)
	g.add(ctx, output{kind: OutputFrame, data: []byte("x")})
	g.seal(1)
	close(acks.done)
	waitUntil(t, "the gate to notice", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.lost
	})
	returned := make(chan struct{})
	go func() {
		g.add(ctx, output{kind: OutputFrame, data: []byte("y")})
		close(returned)
	}()
	select {
	case <-returned:
		t.Fatal("add returned with the backup lost")
	case <-time.After(50 * time.Millisecond):
	}
	if st := g.Stats(); !st.Paused || st.HeldOutputs != 2 { // the sealed one and the one the guest waits at
		t.Fatalf("status with the backup lost: %+v", st)
	}
	cancel()
	<-returned
}

func TestSplitAddr(t *testing.T) {
	for in, want := range map[string][2]string{
		"unix:/tmp/x.sock": {"unix", "/tmp/x.sock"},
		"/tmp/x.sock":      {"unix", "/tmp/x.sock"},
		"127.0.0.1:7100":   {"tcp", "127.0.0.1:7100"},
		"tcp:host:1":       {"tcp", "host:1"},
	} {
		n, a, err := splitAddr(in)
		if err != nil || n != want[0] || a != want[1] {
			t.Errorf("splitAddr(%q) = %q %q %v", in, n, a, err)
		}
	}
	for _, bad := range []string{"", "nonsense"} {
		if _, _, err := splitAddr(bad); err == nil {
			t.Errorf("splitAddr(%q) accepted", bad)
		}
	}
}

// failingDisk fails every write or flush after the first okWrites writes.
type failingDisk struct {
	memDisk
	okWrites  int
	failFlush bool
}

func (d *failingDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	ok := d.okWrites > 0
	d.okWrites--
	d.mu.Unlock()
	if !ok {
		return 0, errors.New("injected: no space left on device")
	}
	return d.memDisk.WriteAt(p, off)
}

func (d *failingDisk) Flush() error {
	if d.failFlush {
		return errors.New("injected: flush failed")
	}
	return d.memDisk.Flush()
}

// TestGateStopsAtFirstFailedDiskOutput: the guest was told a write was done;
// when writing it fails, nothing produced after it may leave (a client could
// otherwise get an answer for data that is not on the disk), the gate fails
// once, and the guest waits at its next output.
func TestGateStopsAtFirstFailedDiskOutput(t *testing.T) {
	for _, tc := range []struct {
		name string
		disk *failingDisk
	}{
		{"write", &failingDisk{memDisk: memDisk{data: make([]byte, 64)}, okWrites: 1}},
		{"flush", &failingDisk{memDisk: memDisk{data: make([]byte, 64)}, okWrites: 99, failFlush: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acks := newFakeAcks()
			var mu sync.Mutex
			var sent []string
			var console bytes.Buffer
			g := newGate(acks, func(f []byte) {
				mu.Lock()
				sent = append(sent, string(f))
				mu.Unlock()
			}, nil)
			g.disks = []blockWriter{tc.disk}
			g.console = &console
			fails := make(chan error, 4)
			g.onFail = func(err error) { fails <- err }
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			runDone := make(chan struct{})
			go func() { g.run(ctx); close(runDone) }()

			g.add(ctx, output{kind: OutputFrame, data: []byte("before")})
			g.add(ctx, output{kind: OutputDiskWrite, off: 0, data: []byte("ok")})
			if tc.name == "write" {
				g.add(ctx, output{kind: OutputDiskWrite, off: 8, data: []byte("LOST")})
			} else {
				g.add(ctx, output{kind: OutputDiskFlush})
			}
			g.add(ctx, output{kind: OutputFrame, data: []byte("OK to the client")})
			g.seal(1)
			g.addConsole(ctx, []byte("committed\n"))
			g.add(ctx, output{kind: OutputFrame, data: []byte("later")})
			g.seal(2)
			acks.ack(2)

			var err error
			select {
			case err = <-fails:
			case <-time.After(5 * time.Second):
				t.Fatal("the gate did not report the failed disk output")
			}
			if !strings.Contains(err.Error(), "injected") || !errors.Is(g.Err(), err) && g.Err() != err {
				t.Fatalf("failure %v, Err %v", err, g.Err())
			}
			time.Sleep(20 * time.Millisecond) // anything wrongly released would show by now
			mu.Lock()
			if len(sent) != 1 || sent[0] != "before" {
				t.Fatalf("sent %q after the failed disk output; want only [before]", sent)
			}
			mu.Unlock()
			if console.Len() != 0 {
				t.Fatalf("console bytes left after the failed disk output: %q", console.String())
			}
			st := g.Stats()
			if st.HeldOutputs != 4 || st.HeldFrames != 2 || st.HeldConsole != 1 {
				t.Fatalf("held after the failure: %+v (want the failed output, the frame after it, the console line and the later frame)", st)
			}
			// The guest waits at its next output; the VM is being stopped.
			returned := make(chan struct{})
			go func() { g.add(ctx, output{kind: OutputFrame, data: []byte("next")}); close(returned) }()
			select {
			case <-returned:
				t.Fatal("add returned after a failed release")
			case <-time.After(30 * time.Millisecond):
			}
			cancel()
			<-returned
			<-runDone
			select {
			case err := <-fails:
				t.Fatalf("onFail called twice (second: %v)", err)
			default:
			}
		})
	}
}

// TestGateHoldsConsoleBytes: console bytes leave only once acked, in order
// with the other outputs, and bytes printed in a row share one output.
func TestGateHoldsConsoleBytes(t *testing.T) {
	acks := newFakeAcks()
	var mu sync.Mutex
	var order []string
	g := newGate(acks, func(f []byte) { mu.Lock(); order = append(order, "frame:"+string(f)); mu.Unlock() }, nil)
	g.console = writerFunc(func(p []byte) { mu.Lock(); order = append(order, "console:"+string(p)); mu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.run(ctx)
	for _, b := range "ready\n" {
		g.addConsole(ctx, []byte(string(b)))
	}
	g.add(ctx, output{kind: OutputFrame, data: []byte("f")})
	g.addConsole(ctx, []byte("bye\n"))
	g.seal(7)
	if st := g.Stats(); st.HeldOutputs != 3 || st.HeldConsole != 2 {
		t.Fatalf("held %+v, want 3 outputs of which 2 console (one per run of bytes)", st)
	}
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	if len(order) != 0 {
		t.Fatalf("released before the ack: %q", order)
	}
	mu.Unlock()
	acks.ack(7)
	waitUntil(t, "the console bytes", func() bool { return g.Stats().ReleasedConsoleBytes == 10 })
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"console:ready\n", "frame:f", "console:bye\n"}; !slices.Equal(order, want) {
		t.Fatalf("released %q, want %q", order, want)
	}
}

type writerFunc func(p []byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }

// TestGateGoesAlone: with the backup lost, outputs stay held and the guest
// waits at its next one; once the primary wins the arbiter (goAlone) every
// held output leaves in order without an ack, the waiting guest goes on,
// and later outputs leave as soon as they are produced.
func TestGateGoesAlone(t *testing.T) {
	acks := newFakeAcks()
	var mu sync.Mutex
	var sent []string
	g := newGate(acks, func(f []byte) { mu.Lock(); sent = append(sent, string(f)); mu.Unlock() }, nil)
	disk := &memDisk{data: make([]byte, 64)}
	g.disks = []blockWriter{disk}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.run(ctx)

	g.add(ctx, output{kind: OutputFrame, data: []byte("a")})
	g.add(ctx, output{kind: OutputDiskWrite, off: 4, data: []byte("held")})
	g.seal(1)
	close(acks.done) // the backup is gone; nothing was acked
	waitUntil(t, "the gate to notice", func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.lost })
	resumed := make(chan struct{})
	go func() { g.add(ctx, output{kind: OutputFrame, data: []byte("b")}); close(resumed) }()
	waitUntil(t, "the guest to pause", func() bool { return g.Stats().Paused })
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	if len(sent) != 0 {
		t.Fatalf("released %q with the backup lost and no arbiter decision", sent)
	}
	mu.Unlock()

	g.goAlone()
	select {
	case <-resumed:
	case <-time.After(5 * time.Second):
		t.Fatal("the guest stayed paused after the primary went on alone")
	}
	waitUntil(t, "the held outputs", func() bool { return g.Stats().ReleasedFrames == 2 })
	if got := string(disk.snapshot()[4:8]); got != "held" {
		t.Fatalf("disk after going alone: %q", got)
	}
	g.add(ctx, output{kind: OutputFrame, data: []byte("c")}) // no seal, no ack
	waitUntil(t, "an output produced alone", func() bool { return g.Stats().ReleasedFrames == 3 })
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sent, []string{"a", "b", "c"}) {
		t.Fatalf("sent %q, want [a b c]", sent)
	}
	if st := g.Stats(); st.HeldOutputs != 0 || st.Paused {
		t.Fatalf("after going alone: %+v", st)
	}
}
