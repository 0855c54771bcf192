package control

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/replication"
)

func TestFromPrimaryReportsTheNumbersItWasGiven(t *testing.T) {
	src := FromPrimary(func() replication.PrimaryStatus {
		return replication.PrimaryStatus{
			State: "replicating", Generation: 3,
			Log: logchannel.Stats{Entries: 1234, EntriesPerSec: 50, BytesPerSec: 4096, LagEntries: 7, LagTime: 250 * time.Millisecond,
				LagP50: 100 * time.Millisecond, LagP99: 750 * time.Millisecond},
			Recorder: replay.RecorderStats{Digests: 42},
			Outputs:  replication.GateStats{HeldOutputs: 5, HeldBytes: 900, OldestHeld: 3 * time.Millisecond},
		}
	})
	got := src.Status()
	want := Status{Role: "primary", PID: os.Getpid(), Phase: "protected", State: "replicating", Generation: 3,
		LagSeconds: 0.25, LagEntries: 7, LagP50Seconds: 0.1, LagP99Seconds: 0.75, HeldOutputs: 5, HeldBytes: 900, OldestHeldSeconds: 0.003,
		LogEntries: 1234, LogEntriesPerSecond: 50, LogBytesPerSecond: 4096, Digests: 42}
	if got != want {
		t.Fatalf("status\n got %+v\nwant %+v", got, want)
	}
}

func TestFromBackupCarriesTheFailoverTimeline(t *testing.T) {
	lost := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	bs := replication.BackupStatus{State: "replaying", Generation: 1, Exit: 99, Replayer: replay.ReplayerStats{Digests: 8}}
	src := FromBackup(func() replication.BackupStatus { return bs })
	if st := src.Status(); st.Phase != "replaying" || st.Failover != nil || st.Digests != 8 || st.Exit != 99 {
		t.Fatalf("replaying backup: %+v", st)
	}
	bs.State = "live: won generation 2 after the primary was lost; unprotected"
	bs.Failover = &replication.FailoverTimeline{PrimaryLost: lost, Why: errors.New("connection reset"),
		Drained: 4 * time.Millisecond, Claimed: 51 * time.Millisecond, Live: 78 * time.Millisecond, Generation: 2, RewrittenWrites: 3, ResentFrames: 4}
	st := src.Status()
	want := Failover{PrimaryLost: lost, Why: "connection reset", DrainedMS: 4, ClaimedMS: 51, LiveMS: 78, Generation: 2, RewrittenWrites: 3, ResentFrames: 4}
	if st.Phase != "live" || st.Failover == nil || *st.Failover != want {
		t.Fatalf("live backup: phase %q failover %+v, want live %+v", st.Phase, st.Failover, want)
	}
}

func TestPhases(t *testing.T) {
	for _, c := range []struct{ state, primary, backup string }{
		{"replicating", "protected", "replicating"},
		{"unprotected: the backup was lost and this primary won generation 2", "unprotected", "unprotected"},
		{"backup lost: outputs held, guest paused at its next output", "backup-lost", "backup"},
		{"halted: the backup won", "halted", "halted"},
		{"primary lost (EOF): claiming the arbiter's record", "primary", "failing-over"},
		{"cannot reach the arbiter (timeout): not acting alone, asking again", "cannot", "failing-over"},
		{"live: won generation 2", "live", "live"},
		{"won generation 2; waiting to go live: disk data is still locked", "won", "failing-over"},
		{"stopped: power off", "stopped", "stopped"},
	} {
		if got := primaryPhase(c.state); got != c.primary {
			t.Errorf("primary %q: phase %q, want %q", c.state, got, c.primary)
		}
		if got := backupPhase(c.state); got != c.backup {
			t.Errorf("backup %q: phase %q, want %q", c.state, got, c.backup)
		}
	}
}

// fakeSource is a side whose status the test sets, counting reads.
type fakeSource struct {
	st    Status
	reads int
}

func (f *fakeSource) Status() Status { f.reads++; return f.st }

func TestStatusJSONFields(t *testing.T) {
	src := &fakeSource{st: Status{Role: "backup", PID: 77, Phase: "live", State: "live: won", Generation: 2,
		LagSeconds: 0.5, Failover: &Failover{Why: "EOF", LiveMS: 78}}}
	srv := httptest.NewServer(Handler(src))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"role": "backup", "pid": 77.0, "phase": "live", "state": "live: won",
		"generation": 2.0, "lag_seconds": 0.5, "held_outputs": 0.0, "log_bytes_per_second": 0.0, "digests": 0.0} {
		if m[k] != want {
			t.Errorf("%s = %v (%T), want %v", k, m[k], m[k], want)
		}
	}
	f, _ := m["failover"].(map[string]any)
	if f["why"] != "EOF" || f["live_ms"] != 78.0 {
		t.Errorf("failover = %v", m["failover"])
	}
	if src.reads != 1 {
		t.Errorf("the source was read %d times for one request", src.reads)
	}
}

func TestMetricsNames(t *testing.T) {
	src := &fakeSource{st: Status{Role: "primary", Phase: "protected", Generation: 4, HeldOutputs: 6, LogEntries: 321, Digests: 9, LagSeconds: 0.125,
		LagP50Seconds: 0.05, LagP99Seconds: 0.5}}
	srv := httptest.NewServer(Handler(src))
	defer srv.Close()
	body := get(t, srv.URL+"/metrics")
	for _, line := range []string{
		`ftvm_phase{phase="protected",role="primary"} 1`,
		`ftvm_generation{role="primary"} 4`,
		`ftvm_held_outputs{role="primary"} 6`,
		`ftvm_log_entries_total{role="primary"} 321`,
		`ftvm_digests_total{role="primary"} 9`,
		`ftvm_replay_lag_seconds{role="primary"} 0.125`,
		`ftvm_replay_lag_quantile_seconds{quantile="0.5",role="primary"} 0.05`,
		`ftvm_replay_lag_quantile_seconds{quantile="0.99",role="primary"} 0.5`,
		`# TYPE ftvm_log_entries_total counter`,
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, body)
		}
	}
	if strings.Contains(body, "ftvm_failover_step_milliseconds") {
		t.Errorf("a side that never failed over reports failover steps:\n%s", body)
	}
	src.st = Status{Role: "backup", Phase: "live", Failover: &Failover{DrainedMS: 4, ClaimedMS: 51, LiveMS: 78, Generation: 2}}
	body = get(t, srv.URL+"/metrics")
	for _, line := range []string{
		`ftvm_failover_step_milliseconds{role="backup",step="claimed"} 51`,
		`ftvm_failover_step_milliseconds{role="backup",step="live"} 78`,
		`ftvm_failover_generation{role="backup"} 2`,
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, body)
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

func TestListenGetAndGone(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "primary.sock")
	if _, err := Get(ctx, path); !errors.Is(err, ErrGone) {
		t.Fatalf("no socket yet: %v, want ErrGone", err)
	}
	src := &fakeSource{st: Status{Role: "primary", Phase: "protected", State: "replicating", Generation: 1}}
	srv, err := Listen(path, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Get(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if st != src.st {
		t.Fatalf("read %+v, served %+v", st, src.st)
	}
	if _, err := Listen(path, src, nil); err == nil {
		t.Fatal("a second server on a served control socket")
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the socket file outlived Close: %v", err)
	}
	if _, err := Get(ctx, path); !errors.Is(err, ErrGone) {
		t.Fatalf("after Close: %v, want ErrGone", err)
	}
}

func TestPendingHandsOver(t *testing.T) {
	p := NewPending("backup")
	if st := p.Status(); st.Role != "backup" || st.Phase != "starting" || st.PID != os.Getpid() {
		t.Fatalf("before Set: %+v", st)
	}
	p.Set(&fakeSource{st: Status{Role: "backup", Phase: "replaying"}})
	if st := p.Status(); st.Phase != "replaying" {
		t.Fatalf("after Set: %+v", st)
	}
}

// POST /protect: refused while nothing can be protected, without an
// address, and when protecting fails (the error says why); once a
// protector is set it is asked with the address and its report returned.
func TestProtectThroughTheControlSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	pend := NewPending("none")
	srv, err := Listen(path, pend, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	if _, err := Protect(ctx, path, "unix:/tmp/b.sock"); err == nil || !strings.Contains(err.Error(), "cannot be protected now") {
		t.Fatalf("protect with no protector: %v", err)
	}
	var asked string
	pend.SetProtector(func(_ context.Context, addr string) (string, error) {
		asked = addr
		if addr == "unix:/tmp/bad.sock" {
			return "", errors.New("connect to the backup: refused")
		}
		return "3 rounds, guest paused 4ms", nil
	})
	if _, err := Protect(ctx, path, ""); err == nil || !strings.Contains(err.Error(), "no backup address") {
		t.Fatalf("protect without an address: %v", err)
	}
	if _, err := Protect(ctx, path, "unix:/tmp/bad.sock"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("a failing protect: %v", err)
	}
	got, err := Protect(ctx, path, "unix:/tmp/b.sock")
	if err != nil || got != "3 rounds, guest paused 4ms" || asked != "unix:/tmp/b.sock" {
		t.Fatalf("protect: %q, %v (asked %q)", got, err, asked)
	}
	if _, err := Protect(ctx, filepath.Join(t.TempDir(), "none.sock"), "x"); !errors.Is(err, ErrGone) {
		t.Fatalf("protect through a missing socket: %v", err)
	}
}

// POST /snapshot: refused until a snapshotter is set, without a file, and
// with the snapshotter's error; otherwise its report.
func TestSnapshotThroughTheControlSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	pend := NewPending("primary")
	srv, err := Listen(path, pend, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	if _, err := Snapshot(ctx, path, "/tmp/x.snap"); err == nil || !strings.Contains(err.Error(), "cannot be snapshotted now") {
		t.Fatalf("snapshot with no snapshotter: %v", err)
	}
	pend.SetSnapshotter(func(_ context.Context, file string) (string, error) {
		if file == "/exists" {
			return "", errors.New("snapshot file /exists exists")
		}
		return file + ": sha256 ab", nil
	})
	if _, err := Snapshot(ctx, path, ""); err == nil || !strings.Contains(err.Error(), "no file") {
		t.Fatalf("snapshot without a file: %v", err)
	}
	if _, err := Snapshot(ctx, path, "/exists"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("a failing snapshot: %v", err)
	}
	if got, err := Snapshot(ctx, path, "/tmp/x.snap"); err != nil || got != "/tmp/x.snap: sha256 ab" {
		t.Fatalf("snapshot: %q, %v", got, err)
	}
}
