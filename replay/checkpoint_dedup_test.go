package replay

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

// dedupPair is a primary and a backup memory of 8 pages, and a recorder
// logging the primary into batches.
type dedupPair struct {
	p, b    *memGuest
	rec     *Recorder
	batches [][]byte
}

// Unless opts says otherwise, every BeforeRun reads the dirty log (a sync
// point at every exit).
func newDedupPair(t *testing.T, opts RecorderOptions) *dedupPair {
	d := &dedupPair{p: newMemGuest(8), b: newMemGuest(8)}
	opts.MarkEvery, opts.DigestInterval = 1, -1
	if opts.SyncInterval == 0 {
		opts.SyncInterval = time.Nanosecond
	}
	d.rec = NewRecorder(func(b []byte) error {
		d.batches = append(d.batches, bytes.Clone(b))
		return nil
	}, opts)
	return d
}

// write is the guest writing page p on the primary and, if both, on the
// backup too (which replays the same instructions).
func (d *dedupPair) write(p int, text string, both bool) {
	gs := []*memGuest{d.p}
	if both {
		gs = append(gs, d.b)
	}
	for _, g := range gs {
		page := g.mem[p*PageSize : (p+1)*PageSize]
		clear(page)
		copy(page, text)
		g.markPage(p)
	}
}

// exit is counted exit n on the primary, up to the next KVM_RUN.
func (d *dedupPair) exit(t *testing.T, n uint64) {
	t.Helper()
	d.rec.Exit(n, kvm.ExitIO, 0x40, func() uint64 { return 0x1000 })
	if err := d.rec.BeforeRun(n, d.p); err != nil {
		t.Fatal(err)
	}
}

func (d *dedupPair) kick(t *testing.T, n uint64) {
	t.Helper()
	if err := d.rec.Kicked(n, d.p); err != nil {
		t.Fatal(err)
	}
}

// replay runs the backup through the whole log.
func (d *dedupPair) replay(t *testing.T) (ReplayerStats, error) {
	t.Helper()
	if err := d.rec.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := NewReplayer(d.batches)
	if err != nil {
		t.Fatal(err)
	}
	err = driveBackup(t, r, d.b, 100)
	if errors.Is(err, vm.ErrLogEnd) {
		err = nil
	}
	return r.Stats(), err
}

// A checkpoint after a sync point carries the content of only the pages
// written since (the kicked stretch), names the pages written before it by
// hash and zero pages as zero; the backup, which wrote the same pages
// replaying, ends with the primary's memory and counts what it checked.
func TestCheckpointHashesPagesTheBackupComputed(t *testing.T) {
	d := newDedupPair(t, RecorderOptions{})
	d.exit(t, 1)
	d.write(0, "before exit 2", true)
	d.write(1, "also before exit 2", true)
	d.write(2, "overwritten after exit 2", true)
	d.write(3, "", true) // a page the guest zeroed
	d.exit(t, 2)
	d.write(2, "written in the kicked stretch", false)
	d.write(5, "only the primary has this", false)
	d.kick(t, 2)

	st := d.rec.Stats()
	if st.CheckpointPagesSent != 2 || st.CheckpointPagesHashed != 2 || st.CheckpointPagesZero != 1 {
		t.Fatalf("recorder stats %+v: want 2 pages sent, 2 hashed, 1 zero", st)
	}
	if st.CheckpointSize >= st.CheckpointRawSize {
		t.Errorf("checkpoint of %d bytes, %d as version 1 shipped it", st.CheckpointSize, st.CheckpointRawSize)
	}
	rs, err := d.replay(t)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.b.mem, d.p.mem) {
		t.Fatal("the backup's memory after the checkpoint differs from the primary's")
	}
	if rs.Checkpoints != 1 || rs.CheckpointPages != 3 || rs.CheckpointPagesVerified != 2 {
		t.Fatalf("replayer stats %+v: want 1 checkpoint, 3 pages loaded, 2 verified", rs)
	}
}

// A backup whose page differs from a page the primary named only by hash
// stops with a divergence naming the page and the exit; it does not load
// the vCPU state and run on.
func TestCheckpointHashedPageTheBackupLacksStops(t *testing.T) {
	d := newDedupPair(t, RecorderOptions{})
	d.exit(t, 1)
	d.write(0, "same on both", true)
	d.write(1, "primary's", false) // the backup missed a write
	d.b.markPage(1)
	d.exit(t, 2)
	d.write(4, "kicked stretch", false)
	d.kick(t, 2)
	_, err := d.replay(t)
	if !errors.Is(err, ErrStateDiffers) || !strings.Contains(err.Error(), "checkpoint at exit #2: page 0x1000") {
		t.Fatalf("got %v, want a divergence at page 0x1000", err)
	}
	if d.b.restored != 0 {
		t.Fatal("the backup loaded the vCPU state of a checkpoint whose page it lacks")
	}
}

// A checkpoint carries the content of every page written since the last
// sync point: with reads at BeforeRun off, every page; with the last read
// some exits before the kick, the pages written since that read, though
// the backup computed them too.
func TestCheckpointSendsPagesWrittenSinceTheSyncPoint(t *testing.T) {
	for _, tc := range []struct {
		name         string
		interval     time.Duration
		sent, hashed uint64
	}{
		{"reads off", -1, 3, 0},
		{"read at exit 1 only", time.Hour, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDedupPair(t, RecorderOptions{SyncInterval: tc.interval})
			d.write(0, "before exit 1", true)
			d.exit(t, 1) // the first BeforeRun reads, unless reads are off
			d.write(1, "before exit 2", true)
			d.exit(t, 2)
			d.write(2, "kicked stretch", false)
			d.kick(t, 2)
			if st := d.rec.Stats(); st.CheckpointPagesSent != tc.sent || st.CheckpointPagesHashed != tc.hashed {
				t.Fatalf("recorder stats %+v: want %d pages sent, %d hashed", st, tc.sent, tc.hashed)
			}
			rs, err := d.replay(t)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(d.b.mem, d.p.mem) || rs.CheckpointPages != tc.sent || rs.CheckpointPagesVerified != tc.hashed {
				t.Fatalf("replayer stats %+v, memories equal %v", rs, bytes.Equal(d.b.mem, d.p.mem))
			}
		})
	}
}

// A second kick with no exit in between has the first one's checkpoint as
// its sync point, even with reads at BeforeRun off: it carries only the
// page written since, and the backup ends with the primary's memory.
func TestSecondKickAtOneExit(t *testing.T) {
	d := newDedupPair(t, RecorderOptions{SyncInterval: -1})
	d.exit(t, 1)
	d.write(0, "first stretch", false)
	d.kick(t, 1)
	// The loop goes round without an exit: BeforeRun at the same exit.
	if err := d.rec.BeforeRun(1, d.p); err != nil {
		t.Fatal(err)
	}
	d.write(1, "second stretch", false)
	d.kick(t, 1)
	if st := d.rec.Stats(); st.Checkpoints != 2 || st.CheckpointPagesSent != 2 || st.CheckpointPagesHashed != 0 {
		t.Fatalf("recorder stats %+v: want 2 checkpoints, 2 pages sent", st)
	}
	rs, err := d.replay(t)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.b.mem, d.p.mem) || rs.Checkpoints != 2 {
		t.Fatalf("replayer stats %+v, memories equal %v", rs, bytes.Equal(d.b.mem, d.p.mem))
	}
}

// Many dirty pages span several chunks, each at most MaxChunkPages.
func TestCheckpointSpansChunks(t *testing.T) {
	d := &dedupPair{p: newMemGuest(3 * MaxChunkPages), b: newMemGuest(3 * MaxChunkPages)}
	d.rec = NewRecorder(func(b []byte) error {
		d.batches = append(d.batches, bytes.Clone(b))
		return nil
	}, RecorderOptions{MarkEvery: 1, DigestInterval: -1, SyncInterval: time.Nanosecond})
	d.exit(t, 1)
	for p := range 2*MaxChunkPages + 5 {
		d.write(p, strings.Repeat("x", p+1), p%2 == 0)
	}
	d.exit(t, 2)
	for p := 1; p < 2*MaxChunkPages+5; p += 2 {
		d.write(p, strings.Repeat("y", p+1), false)
	}
	d.b.written = nil // the backup's own bits: not what is tested here
	d.kick(t, 2)
	rs, err := d.replay(t)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.b.mem, d.p.mem) {
		t.Fatal("memories differ after a checkpoint of several chunks")
	}
	var chunks int
	for _, b := range d.batches {
		evs, err := DecodeBatch(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.Type == CheckpointChunk {
				chunks++
			}
		}
	}
	if chunks != 3 || rs.CheckpointPagesVerified != MaxChunkPages+3 {
		t.Fatalf("%d chunks, %d pages verified; want 3 chunks and %d verified", chunks, rs.CheckpointPagesVerified, MaxChunkPages+3)
	}
}

// A state digest reads the dirty log at a BeforeRun, so it is a sync point
// too, with reads of its own off.
func TestDigestIsASyncPoint(t *testing.T) {
	d := newDedupPair(t, RecorderOptions{SyncInterval: -1, DigestEvery: 2})
	d.exit(t, 1)
	d.write(0, "before the digest at exit 2", true)
	d.exit(t, 2)
	d.write(1, "kicked stretch", false)
	d.kick(t, 2)
	if st := d.rec.Stats(); st.Digests != 1 || st.CheckpointPagesSent != 1 || st.CheckpointPagesHashed != 1 {
		t.Fatalf("recorder stats %+v: want 1 digest, 1 page sent, 1 hashed", st)
	}
	rs, err := d.replay(t)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.b.mem, d.p.mem) || rs.Digests != 1 || rs.CheckpointPagesVerified != 1 {
		t.Fatalf("replayer stats %+v, memories equal %v", rs, bytes.Equal(d.b.mem, d.p.mem))
	}
}
