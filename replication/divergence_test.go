package replication_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

// linuxVM runs the test image's kernel with the sleep workload and an
// ext4 data disk (mounted at boot, so the guest writes it), recording or
// replaying. A replaying VM is a backup: it never touches the disk.
func linuxVM(t *testing.T, storeDir string, rec vm.Recorder, rep vm.Replayer) (vm.StopReason, vm.Stats, string, error) {
	t.Helper()
	var console bytes.Buffer
	inst, err := instance.New(context.Background(), instance.Config{
		Image: testimage.Dir(t), Append: "ftvm.workload=sleep ftvm.seconds=2", MemoryMiB: 128,
		Disks: []string{"data"}, StorageDir: storeDir,
		Console: &console, Record: rec, Replay: rep, Backup: rep != nil,
		WallTime: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
		// The hashed-checkpoint case needs kicks: the tightest bound.
		RecordingKickAfter: vm.LiveKickAfter,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	reason, err := inst.Run(ctx)
	if rec, ok := rec.(*replay.Recorder); ok {
		if cerr := rec.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return reason, inst.VM.Stats(), console.String(), err
}

// TestAlteredLogValueIsCaught records a Linux guest booting and sleeping,
// then replays the log four times with one value changed: the RIP of one
// exit's mark and the hash of one disk write (the backup must stop at
// exactly that exit), one checkpoint page's hash (the backup must stop at
// that checkpoint), and one PM-timer value, a second ahead (the guest then
// computes with another time; the backup must stop no later than the next
// state digest after it). The unaltered log replays to the end.
func TestAlteredLogValueIsCaught(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	const digestEvery = 2000
	storeDir := t.TempDir()
	store, err := storage.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateDisk(context.Background(), "data", 32<<20, storage.CreateOptions{Filesystem: storage.FilesystemExt4}); err != nil {
		t.Fatal(err)
	}
	var batches [][]byte
	rec := replay.NewRecorder(func(b []byte) error {
		batches = append(batches, bytes.Clone(b))
		return nil
	}, replay.RecorderOptions{DigestEvery: digestEvery, DigestInterval: -1})
	reason, pst, pout, err := linuxVM(t, storeDir, rec, nil)
	if err != nil || reason != vm.StoppedPowerOff {
		t.Fatalf("primary: %v %v\n%s", reason, err, pout)
	}
	var events []replay.Event
	for _, b := range batches {
		evs, err := replay.DecodeBatch(b)
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, evs...)
	}
	t.Logf("recorded %d exits, %d kicks, %d events in %d batches, %d output hashes", pst.SyncExits, pst.Kicks, len(events), len(batches), rec.Stats().Outputs)

	replayWith := func(evs []replay.Event) (vm.StopReason, vm.Stats, error) {
		var enc replay.Encoder
		enc.Begin(nil)
		var out [][]byte
		for i := range evs {
			if err := enc.Append(&evs[i]); err != nil {
				t.Fatal(err)
			}
			if enc.Len() > 64<<10 {
				out = append(out, bytes.Clone(enc.Bytes()))
				enc.Begin(nil)
			}
		}
		out = append(out, bytes.Clone(enc.Bytes()))
		rep, err := replay.NewReplayer(out)
		if err != nil {
			t.Fatal(err)
		}
		reason, st, _, err := linuxVM(t, storeDir, nil, rep)
		return reason, st, err
	}
	// Choose exits in the middle of the run, well after boot.
	mid := pst.SyncExits / 2

	t.Run("unaltered", func(t *testing.T) {
		reason, st, err := replayWith(events)
		if err != nil || reason != vm.StoppedPowerOff || st.SyncExits != pst.SyncExits {
			t.Fatalf("backup: %v after %d exits (primary %d): %v", reason, st.SyncExits, pst.SyncExits, err)
		}
	})
	t.Run("unaltered under signals", func(t *testing.T) {
		// Any signal makes KVM_RUN return early at an instruction where
		// the primary had no exit; a backup must go straight back in
		// (seen under load: a stray one made a backup inject a timer
		// interrupt early and diverge).
		stop := guesttest.SignalStorm(t, time.Millisecond)
		reason, st, err := replayWith(events)
		stop()
		interrupted := st.Exits[kvm.ExitInterrupted]
		if err != nil || reason != vm.StoppedPowerOff || st.SyncExits != pst.SyncExits {
			t.Fatalf("backup, interrupted %d times by signals: %v after %d exits (primary %d): %v", interrupted, reason, st.SyncExits, pst.SyncExits, err)
		}
		if interrupted == 0 {
			t.Fatal("no signal interrupted the backup's KVM_RUN: the test proved nothing")
		}
		t.Logf("the backup was interrupted %d times by signals and replayed all %d exits", interrupted, st.SyncExits)
	})
	t.Run("mark RIP", func(t *testing.T) {
		evs := append([]replay.Event(nil), events...)
		i := indexOf(evs, func(ev replay.Event) bool { return ev.Type == replay.ExitMark && ev.Exit >= mid && ev.Kind == 2 })
		evs[i].RIP ^= 1
		_, _, err := replayWith(evs)
		var de *vm.DivergenceError
		if !errors.As(err, &de) || de.Exit != evs[i].Exit {
			t.Fatalf("altered the RIP of exit #%d's mark; backup: %v", evs[i].Exit, err)
		}
		t.Logf("altered the RIP of exit #%d's mark: %v", evs[i].Exit, de)
	})
	t.Run("output hash", func(t *testing.T) {
		// The guest's last disk write (unmounting at power-off): the
		// backup must stop at its exit, saying its write differs.
		evs := append([]replay.Event(nil), events...)
		i := -1
		for j, ev := range evs {
			if ev.Type == replay.Output && ev.Kind == replay.OutputDiskWrite {
				i = j
			}
		}
		if i < 0 {
			t.Fatal("the guest wrote nothing to its disk")
		}
		evs[i].Hash[0] ^= 1
		_, _, err := replayWith(evs)
		var de *vm.DivergenceError
		if !errors.As(err, &de) || de.Exit != evs[i].Exit || !strings.Contains(err.Error(), "other bytes than the primary's") {
			t.Fatalf("altered the hash of the disk write at exit #%d; backup: %v", evs[i].Exit, err)
		}
		t.Logf("altered the hash of the disk write at exit #%d: %v", evs[i].Exit, de)
	})
	t.Run("hashed checkpoint page", func(t *testing.T) {
		// A page the primary named by hash only: the backup computed it
		// replaying and must check it. One bit of the hash flipped, it
		// must stop at that checkpoint's exit, naming the page, before it
		// loads the vCPU state and runs on.
		evs := append([]replay.Event(nil), events...)
		at, addr := -1, uint64(0)
		for j := range evs {
			if evs[j].Type != replay.CheckpointChunk {
				continue
			}
			pages, content, err := replay.DecodePageChunk(evs[j].Data)
			if err != nil {
				t.Fatal(err)
			}
			k := slices.IndexFunc(pages, func(p replay.ChunkPage) bool { return p.Kind == replay.PageHashed })
			if k < 0 {
				continue
			}
			pages[k].Hash[0] ^= 1
			if evs[j].Data, err = replay.EncodePageChunk(pages, content); err != nil {
				t.Fatal(err)
			}
			at, addr = j, pages[k].Page*replay.PageSize
			break
		}
		if at < 0 {
			t.Fatal("no checkpoint named a page by hash: the test proves nothing")
		}
		_, _, err := replayWith(evs)
		var de *vm.DivergenceError
		if !errors.As(err, &de) || de.Exit != evs[at].Exit || !errors.Is(err, replay.ErrStateDiffers) ||
			!strings.Contains(err.Error(), fmt.Sprintf("page %#x hashes to", addr)) {
			t.Fatalf("altered the hash of page %#x in the checkpoint at exit #%d; backup: %v", addr, evs[at].Exit, err)
		}
		t.Logf("altered the hash of page %#x in the checkpoint at exit #%d: %v", addr, evs[at].Exit, de)
	})
	t.Run("clock value", func(t *testing.T) {
		evs := append([]replay.Event(nil), events...)
		i := indexOf(evs, func(ev replay.Event) bool { return ev.Type == replay.ClockRead && ev.Exit >= mid })
		// A second ahead: a millisecond is sometimes absorbed (the guest
		// compares the value with a far deadline and keeps nothing of it;
		// 2 of 4 reads tried), and an execution that stays the same is no
		// divergence. A second flips comparisons or lands in timekeeping:
		// 4 of 4 were caught, by the next digest or a few exits later.
		evs[i].Value += int64(time.Second)
		next := indexOf(evs[i:], func(ev replay.Event) bool { return ev.Type == replay.StateDigest })
		_, _, err := replayWith(evs)
		var de *vm.DivergenceError
		if !errors.As(err, &de) || de.Exit < evs[i].Exit || de.Exit > evs[i+next].Exit {
			t.Fatalf("altered the clock read at exit #%d (next digest at #%d); backup: %v", evs[i].Exit, evs[i+next].Exit, err)
		}
		t.Logf("altered the clock read at exit #%d (next digest at #%d): stopped at exit #%d: %v", evs[i].Exit, evs[i+next].Exit, de.Exit, de.Err)
	})
}

func indexOf(evs []replay.Event, f func(replay.Event) bool) int {
	for i, ev := range evs {
		if f(ev) {
			return i
		}
	}
	panic("no such event in the log")
}
