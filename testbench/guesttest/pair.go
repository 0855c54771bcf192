package guesttest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replication"
	"github.com/ftvm/ftvm/storage/arbiter"
)

// pairPrimaryEnv makes a test binary the primary of a Pair (see
// PairMain): its value is the JSON of a pairPrimarySpec.
const pairPrimaryEnv = "FTVM_TEST_PAIR_PRIMARY"

// PairLog is the log channel's configuration for a test pair in the nested
// host, where several VMs share one emulated CPU: heartbeats can be late by
// a second, so only a reset connection (a killed process) counts as lost
// before 10 s of silence.
var PairLog = logchannel.Config{Timeout: 10 * time.Second}

// pairPrimarySpec is what the primary's process needs: the machine (the
// fields of instance.Config a test pair sets), where the backup listens
// and the arbiter record.
type pairPrimarySpec struct {
	Image, NetSocket, IP, MAC, Append, StorageDir string
	MemoryMiB                                     int
	Disks                                         []string
	Peer, ArbiterDir, Pair                        string
}

// PairMain runs this process as the primary of a Pair when the test
// binary was started for one, and returns its exit status; ok is false
// otherwise. A TestMain of a package that starts pairs calls it first.
func PairMain() (status int, ok bool) {
	v := os.Getenv(pairPrimaryEnv)
	if v == "" {
		return 0, false
	}
	var spec pairPrimarySpec
	if err := json.Unmarshal([]byte(v), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "pair primary: %s: %v\n", pairPrimaryEnv, err)
		return 2, true
	}
	arb, err := arbiter.OpenDir(spec.ArbiterDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pair primary:", err)
		return 1, true
	}
	// The console goes to stdout (the test waits for lines there), the
	// primary's log to stderr.
	_, err = replication.RunPrimary(context.Background(), replication.PrimaryConfig{
		Instance: instance.Config{
			Image: spec.Image, NetSocket: spec.NetSocket, IP: spec.IP, MAC: spec.MAC, Append: spec.Append,
			StorageDir: spec.StorageDir, MemoryMiB: spec.MemoryMiB, Disks: spec.Disks, Console: os.Stdout,
		},
		Peer: spec.Peer, Log: PairLog, Arbiter: arb, Pair: spec.Pair, Owner: "primary",
		StatusEvery: 10 * time.Second, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pair primary:", err)
		return 1, true
	}
	return 0, true
}

// Pair is one guest run by a test as an ftvm primary/backup pair: the
// backup in this process, the primary in a child process (this test
// binary again, see PairMain) that the test can SIGKILL. Both share an
// arbiter directory; the backup goes live when its primary is lost.
type Pair struct {
	Name string
	// Console is the guest's console as the primary released it: what
	// the world saw of the guest until the primary died. BackupConsole is
	// the backup's: the output its replay reproduces, then what the guest
	// printed after the backup went live. Stopped gets an error if the
	// backup ends with one.
	Console, BackupConsole *Console
	Stopped                <-chan error
	primary                *exec.Cmd
	primaryLog             *Console
	primaryDone            chan struct{}
	primaryErr             error
	backupCancel           context.CancelFunc
	backupDone             chan struct{}
	backupRes              *replication.BackupResult
	backupErr              error
	status                 atomic.Pointer[func() replication.BackupStatus]
}

// StartPair starts the backup, then the primary of the machine cfg
// describes (Console and the replication fields are the pair's), and
// returns without waiting for the guest to boot.
func StartPair(t testing.TB, name string, cfg instance.Config) *Pair {
	t.Helper()
	dir := t.TempDir()
	p := &Pair{Name: name, Console: NewConsole(), BackupConsole: NewConsole(), primaryLog: NewConsole(),
		primaryDone: make(chan struct{}), backupDone: make(chan struct{})}
	stopped := make(chan error, 2)
	p.Stopped = stopped
	arbDir := filepath.Join(dir, "arbiter")
	arb, err := arbiter.OpenDir(arbDir)
	if err != nil {
		t.Fatalf("pair %s: %v", name, err)
	}
	logSock := filepath.Join(dir, "log.sock")
	bcfg := replication.BackupConfig{
		Instance: cfg, Listen: "unix:" + logSock, Log: PairLog, Arbiter: arb, Pair: name, Owner: "backup",
		Running: func(f func() replication.BackupStatus) { p.status.Store(&f) },
	}
	bcfg.Instance.Console = p.BackupConsole
	listening := make(chan struct{})
	bcfg.Listening = func(net.Addr) { close(listening) }
	ctx, cancel := context.WithCancel(context.Background())
	p.backupCancel = cancel
	go func() {
		p.backupRes, p.backupErr = replication.RunBackup(ctx, bcfg)
		close(p.backupDone)
		if p.backupErr != nil {
			stopped <- fmt.Errorf("pair %s: backup: %w", name, p.backupErr)
		}
	}()
	select {
	case <-listening:
	case <-p.backupDone:
		t.Fatalf("pair %s: the backup failed to start: %v", name, p.backupErr)
	}

	spec, err := json.Marshal(pairPrimarySpec{
		Image: cfg.Image, NetSocket: cfg.NetSocket, IP: cfg.IP, MAC: cfg.MAC, Append: cfg.Append, StorageDir: cfg.StorageDir,
		MemoryMiB: cfg.MemoryMiB, Disks: cfg.Disks, Peer: "unix:" + logSock, ArbiterDir: arbDir, Pair: name,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.primary = exec.Command(os.Args[0], "-test.run=^$")
	p.primary.Env = append(os.Environ(), pairPrimaryEnv+"="+string(spec))
	p.primary.Stdout, p.primary.Stderr = p.Console, p.primaryLog
	if err := p.primary.Start(); err != nil {
		t.Fatalf("pair %s: start the primary: %v", name, err)
	}
	go func() {
		p.primaryErr = p.primary.Wait()
		close(p.primaryDone)
	}()
	t.Cleanup(func() {
		p.primary.Process.Kill()
		<-p.primaryDone
		p.backupCancel()
		<-p.backupDone
		if t.Failed() {
			t.Logf("pair %s: primary's log:\n%s\nconsole:\n%s\nbackup: %v\nbackup's console:\n%s",
				name, p.primaryLog.String(), p.Console.String(), p.BackupStatus(), p.BackupConsole.String())
		}
	})
	return p
}

// BackupStatus is the backup's status now (zero before its VM exists).
func (p *Pair) BackupStatus() replication.BackupStatus {
	if f := p.status.Load(); f != nil {
		return (*f)()
	}
	return replication.BackupStatus{}
}

// KillPrimary SIGKILLs the primary's process, as a host crash would end
// it, and returns when it was sent.
func (p *Pair) KillPrimary(t testing.TB) time.Time {
	t.Helper()
	killed := time.Now()
	if err := p.primary.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("pair %s: kill the primary: %v", p.Name, err)
	}
	return killed
}

// WaitLive waits until the backup reports itself live after the primary
// was lost, and returns its failover timeline.
func (p *Pair) WaitLive(t testing.TB, timeout time.Duration) replication.FailoverTimeline {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := p.BackupStatus()
		if strings.HasPrefix(st.State, "live") && st.Failover != nil {
			return *st.Failover
		}
		select {
		case <-p.backupDone:
			t.Fatalf("pair %s: the backup ended (%v) instead of going live", p.Name, p.backupErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pair %s: the backup is not live %v after the kill: %v", p.Name, timeout, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PrimaryKilled reports whether the primary's process ended by SIGKILL.
func (p *Pair) PrimaryKilled() bool {
	<-p.primaryDone
	ee, ok := p.primaryErr.(*exec.ExitError)
	if !ok {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// StopBackup pulls the plug on the backup (live or not), as on a crash of
// its host, and returns once its VM stopped and released disks and port.
func (p *Pair) StopBackup() {
	p.backupCancel()
	<-p.backupDone
}
