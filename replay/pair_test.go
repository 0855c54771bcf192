package replay_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// TestPairOverTheLogChannel runs a primary and a backup at the same time:
// the primary's recorder appends each batch to a log channel, the backup
// replays entries as they arrive (waiting when the log is empty), and
// executes exactly what the primary executed.
func TestPairOverTheLogChannel(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	for _, name := range []string{"pit", "window"} {
		t.Run(name, func(t *testing.T) { runPair(t, name) })
	}
}

// runPair runs one primary/backup pair.
func runPair(t *testing.T, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Two VMs share the nested host's one emulated CPU: heartbeats can be
	// late by far more than the default timeout.
	lc := logchannel.Config{Timeout: 10 * time.Second}
	sender, receiver, err := logchannel.Pipe(ctx, lc, lc)
	if err != nil {
		t.Fatal(err)
	}
	defer receiver.Close()

	type result struct {
		out    string
		st     vm.Stats
		reason vm.StopReason
		err    error
	}
	backup := make(chan result, 1)
	go func() {
		rep := replay.NewStreamReplayer(func() ([]byte, error) {
			_, entry, err := receiver.Next(ctx)
			if errors.Is(err, logchannel.ErrPeerClosed) {
				return nil, io.EOF
			}
			return entry, err
		})
		out, st, reason, err := runGuest(t, name, vm.Config{Replay: rep})
		backup <- result{out, st, reason, err}
	}()

	var appendErr error
	rec := replay.NewRecorder(func(b []byte) error {
		if _, err := sender.Append(ctx, b); err != nil && appendErr == nil {
			appendErr = err
		}
		return nil
	}, replay.RecorderOptions{BatchBytes: 512})
	var closeErr error
	pout, pst, reason, err := runGuestThen(t, name, vm.Config{Record: rec}, func() { closeErr = rec.Close() })
	if err != nil || reason != vm.StoppedPowerOff || closeErr != nil || appendErr != nil {
		t.Fatalf("primary: %v %v %v %v", reason, err, closeErr, appendErr)
	}
	last := sender.Stats().LastSeq
	if err := sender.WaitAcked(ctx, last); err != nil {
		t.Fatalf("backup did not ack the log: %v", err)
	}
	sender.Close()

	b := <-backup
	if pst.Kicks != 0 {
		t.Logf("primary was kicked %d times (host under load); the backup loaded a checkpoint for each", pst.Kicks)
	}
	if b.err != nil {
		t.Fatalf("backup: %v", b.err)
	}
	t.Logf("%d log entries acked; primary %d exits, backup %d exits, backup stopped: %v",
		last, pst.SyncExits, b.st.SyncExits, b.reason)
	if b.reason != vm.StoppedPowerOff || b.st.SyncExits != pst.SyncExits || b.st.Injected != pst.Injected || b.out != pout {
		t.Fatalf("backup: %v after %d exits, %d injections, printed %q; primary: %d, %d, %q",
			b.reason, b.st.SyncExits, b.st.Injected, b.out, pst.SyncExits, pst.Injected, pout)
	}
}
