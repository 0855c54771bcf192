package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestVMMArgs(t *testing.T) {
	p := Pair{Name: "kv", Dir: "/run/ftvm/kv", Machine: []string{"--image", "out/image", "--mem", "512"}}
	got := p.VMMArgs(Backup)
	want := []string{"run", "--image", "out/image", "--mem", "512", "--net", "/run/ftvm/kv/net.sock",
		"--role", "backup", "--listen", "unix:/run/ftvm/kv/log.sock", "--protect-to", "unix:/run/ftvm/kv/log2.sock",
		"--storage-server", "/run/ftvm/kv/storage.sock", "--pair", "kv",
		"--control", "/run/ftvm/kv/backup.sock", "--console", "/run/ftvm/kv/backup.console"}
	if !slices.Equal(got, want) {
		t.Fatalf("backup args\n got %q\nwant %q", got, want)
	}
	// The backup made by the second re-protection listens where the one
	// before it protects to, and protects to the next.
	got = p.vmmArgs(Backup, 3)
	if flagValue(got, "--listen") != "unix:/run/ftvm/kv/log3.sock" || flagValue(got, "--protect-to") != "unix:/run/ftvm/kv/log4.sock" {
		t.Errorf("third backup's args: %q", got)
	}
	p.NoReprotect = true
	if got := p.VMMArgs(Backup); slices.Contains(got, "--protect-to") {
		t.Errorf("backup args without re-protection: %q", got)
	}
	p.NoReprotect = false
	// Without a storage server: the arbiter record in the run directory,
	// the disks from the storage directory.
	p.StorageServer, p.StorageDir = NoStorageServer, "/srv/disks"
	got = p.VMMArgs(Backup)
	if flagValue(got, "--arbiter") != "/run/ftvm/kv/arbiter" || flagValue(got, "--storage") != "/srv/disks" || slices.Contains(got, "--storage-server") {
		t.Errorf("backup args without a storage server: %q", got)
	}
	if got, want := p.StorageArgs(), []string{"storage", "serve", "--socket", "/run/ftvm/kv/storage.sock", "--dir", "/srv/disks"}; !slices.Equal(got, want) {
		t.Errorf("storage server args %q, want %q", got, want)
	}
	p.StorageServer = "/run/shared/storage.sock"
	p.Net = "/tmp/other-net.sock"
	got = p.VMMArgs(Primary)
	for _, pair := range [][2]string{{"--role", "primary"}, {"--peer", "unix:/run/ftvm/kv/log.sock"}, {"--net", "/tmp/other-net.sock"},
		{"--control", "/run/ftvm/kv/primary.sock"}, {"--console", "/run/ftvm/kv/primary.console"},
		{"--storage-server", "/run/shared/storage.sock"}, {"--pair", "kv"}} {
		if v := flagValue(got, pair[0]); v != pair[1] {
			t.Errorf("primary %s = %q, want %q (args %q)", pair[0], v, pair[1], got)
		}
	}
	if slices.Contains(got, "--listen") {
		t.Errorf("primary args have --listen: %q", got)
	}
	// The machine flags are not shared with the caller's slice.
	if p.Machine[len(p.Machine)-1] != "512" {
		t.Errorf("VMMArgs changed Machine: %q", p.Machine)
	}
	p.Forwards = []string{"7000=7000", "8080=80"}
	if got, want := p.SwitchArgs(), []string{"net", "serve", "--socket", "/run/ftvm/kv/net.sock", "--forward", "7000=7000", "--forward", "8080=80"}; !slices.Equal(got, want) {
		t.Errorf("switch args %q, want %q", got, want)
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	d, err := DefaultDir("kv")
	if err != nil || d != "/run/user/1000/ftvm/kv" {
		t.Fatalf("DefaultDir = %q, %v", d, err)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	d, err = DefaultDir("kv")
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 && d != "/run/ftvm/kv" || os.Geteuid() != 0 && !strings.HasSuffix(string(d), ".local/state/ftvm/kv") {
		t.Fatalf("DefaultDir without XDG_RUNTIME_DIR (euid %d) = %q", os.Geteuid(), d)
	}
	if err := ValidateName("../x"); err == nil {
		t.Error("a pair name with a path in it was accepted")
	}
}

func TestPIDFileNamesOnlyItsProcess(t *testing.T) {
	dir := RunDir(t.TempDir())
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { sleep.Wait(); close(done) }()
	t.Cleanup(func() { sleep.Process.Kill(); <-done })
	path := dir.PIDFile("x")
	if err := writePIDFile(path, sleep.Process.Pid); err != nil {
		t.Fatal(err)
	}
	proc, err := readPIDFile(path)
	if err != nil || proc.PID != sleep.Process.Pid {
		t.Fatalf("read back %+v, %v; wrote pid %d", proc, err, sleep.Process.Pid)
	}
	// Same pid, another start time: a reused pid is not our process.
	os.WriteFile(path, []byte(strings.Replace(mustRead(t, path), " ", " 1", 1)), 0o600)
	if _, err := readPIDFile(path); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("a pid file with another start time: %v, want ErrNotRunning", err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := readPIDFile(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("a garbled pid file: %v, want an error naming it", err)
	}
	if _, err := readPIDFile(dir.PIDFile("none")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("a missing pid file: %v", err)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestStopTerminatesAndCleans(t *testing.T) {
	dir := RunDir(t.TempDir())
	var procs []*exec.Cmd
	dones := map[string]chan struct{}{}
	for _, name := range []string{Primary, Backup} {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, c)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }() // reap, as a supervisor would
		dones[name] = done
		if err := writePIDFile(dir.PIDFile(name), c.Process.Pid); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, c := range procs {
			c.Process.Kill()
		}
	})
	os.WriteFile(dir.Control(Primary), nil, 0o600) // a socket left behind
	os.WriteFile(dir.LogFile(Primary), []byte("log"), 0o600)
	stopped, err := Stop(context.Background(), dir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(stopped) != 2 || !strings.HasPrefix(stopped[0], "primary") || !strings.HasPrefix(stopped[1], "backup") {
		t.Fatalf("stopped %q, want primary then backup", stopped)
	}
	for name, done := range dones {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("the %s's process still runs after Stop", name)
		}
	}
	for _, f := range []string{dir.PIDFile(Primary), dir.PIDFile(Backup), dir.Control(Primary)} {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("%s outlived Stop: %v", f, err)
		}
	}
	if mustRead(t, dir.LogFile(Primary)) != "log" {
		t.Error("Stop removed a log")
	}
	if stopped, err := Stop(context.Background(), dir, time.Second); err != nil || len(stopped) != 0 {
		t.Fatalf("Stop of a stopped pair: %q, %v", stopped, err)
	}
}

func TestTerminateKillsAProcessIgnoringSIGTERM(t *testing.T) {
	c := exec.Command("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done")
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil { // the trap is set
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	proc, err := processOf(c.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := terminate(context.Background(), proc, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("terminate returned but the process runs")
	}
	if !strings.Contains(c.ProcessState.String(), "killed") {
		t.Errorf("the process ended by %v, want SIGKILL", c.ProcessState)
	}
}

// shortTempDir is a temporary directory with a path short enough for
// unix sockets (t.TempDir's can be too long).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ftvm-sup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fakePair is a Pair whose children are this test binary acting as ftctl.
func fakePair(t *testing.T) Pair {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_FTCTL", "1")
	dir := shortTempDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
			for _, l := range logs {
				t.Logf("%s:\n%s", l, mustRead(t, l))
			}
		}
	})
	return Pair{Name: "kv", Dir: RunDir(dir), Ftctl: exe, Machine: []string{"--image", "ok"}, Timeout: 20 * time.Second}
}

func TestDetachedRunStatusKillStop(t *testing.T) {
	p := fakePair(t)
	ctx := context.Background()
	sup, err := Detach(p.Dir, p.Ftctl, []string{"start", "--run-dir", string(p.Dir), "--image", "ok", "--no-reprotect"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := sup.WaitProtected(wctx); err != nil {
		t.Fatal(err)
	}
	// A second start on the same run directory fails and leaves the
	// running pair alone.
	again, err := Detach(p.Dir, p.Ftctl, []string{"start", "--run-dir", string(p.Dir), "--image", "ok"})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.WaitProtected(wctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("a second supervisor on the same run directory: %v", err)
	}
	for _, name := range []string{Supervisor, Switch, Storage, Primary, Backup} {
		if _, err := readPIDFile(p.Dir.PIDFile(name)); err != nil {
			t.Errorf("%s pid file: %v", name, err)
		}
	}
	if log := mustRead(t, p.Dir.LogFile(Backup)); !strings.Contains(log, `"--role" "backup"`) {
		t.Errorf("backup log lacks its command line:\n%s", log)
	}
	ps := Read(ctx, p.Name, p.Dir)
	if ps.Primary.Status == nil || ps.Primary.Status.Phase != "protected" || ps.Primary.Status.HeldOutputs != 2 ||
		ps.Backup.Status == nil || ps.Backup.Status.Phase != "replaying" {
		t.Fatalf("status of a started pair: %+v", ps)
	}
	var text bytes.Buffer
	ps.WriteText(&text)
	if !strings.Contains(text.String(), "primary  protected") || !strings.Contains(text.String(), "held outputs 2") {
		t.Errorf("status text:\n%s", text.String())
	}

	if pid, _, err := SignalPrimary(p.Dir, syscall.SIGKILL); err != nil || pid != ps.Primary.Status.PID {
		t.Fatalf("killed pid %d (%v); the primary said it was %d", pid, err, ps.Primary.Status.PID)
	}
	st, err := WaitPhase(wctx, p.Dir, Backup, "live", "halted")
	if err != nil {
		t.Fatal(err)
	}
	if st.Failover == nil || st.Failover.Generation != 2 {
		t.Fatalf("live backup without its timeline: %+v", st)
	}
	ps = Read(ctx, p.Name, p.Dir)
	if ps.Primary.Err != "gone" || ps.LastFailover() == nil {
		t.Fatalf("after the kill: %+v", ps)
	}
	text.Reset()
	ps.WriteText(&text)
	if !strings.Contains(text.String(), "primary  gone") || !strings.Contains(text.String(), "last failover: primary lost") {
		t.Errorf("status text after failover:\n%s", text.String())
	}
	if b, err := json.Marshal(ps); err != nil || !strings.Contains(string(b), `"error":"gone"`) {
		t.Errorf("status JSON: %s, %v", b, err)
	}
	if _, _, err := SignalPrimary(p.Dir, syscall.SIGKILL); err == nil {
		t.Error("a second kill found a primary")
	}

	stopped, err := Stop(ctx, p.Dir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range stopped {
		names = append(names, strings.Fields(s)[0])
	}
	// Once the backup is gone the supervisor stops the switch and exits
	// on its own: Stop may find them gone.
	if len(names) == 0 || names[0] != Backup {
		t.Errorf("stopped %q, want the backup first", stopped)
	}
	select {
	case err := <-sup.exited:
		if err != nil {
			t.Fatalf("the supervisor after Stop: %v\n%s", err, mustRead(t, p.Dir.LogFile(Supervisor)))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor did not exit after its pair was stopped")
	}
	if files, _ := filepath.Glob(filepath.Join(string(p.Dir), "*.sock")); len(files) != 0 {
		t.Errorf("sockets left: %q", files)
	}
}

func TestRunReportsAChildThatFailsToStart(t *testing.T) {
	p := fakePair(t)
	p.Machine = []string{"--image", "fail"}
	err := p.Run(context.Background(), func() { t.Error("ready called for a pair that never started") })
	if err == nil || !strings.Contains(err.Error(), "the backup exited") || !strings.Contains(err.Error(), "image fail: no such image") {
		t.Fatalf("Run with a failing backup: %v", err)
	}
	for _, name := range []string{Switch, Storage} {
		if _, err := readPIDFile(p.Dir.PIDFile(name)); !errors.Is(err, ErrNotRunning) {
			t.Errorf("the %s outlived a failed start: %v", name, err)
		}
	}
}

// A pid file is read back only as it was written: a positive pid and a
// start time, nothing else (a pid of 0 or -1 would signal a group).
func FuzzParsePIDFile(f *testing.F) {
	f.Add([]byte("123 456\n"))
	f.Add([]byte("-1 0"))
	f.Add([]byte("0 5\n"))
	f.Add([]byte("12 34 56"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePIDFile(b)
		if err != nil {
			return
		}
		if p.PID <= 0 {
			t.Fatalf("%q parsed to pid %d", b, p.PID)
		}
		if again, err := parsePIDFile(fmt.Appendf(nil, "%d %d\n", p.PID, p.Start)); err != nil || again != p {
			t.Fatalf("%q: %+v does not round-trip: %+v, %v", b, p, again, err)
		}
	})
}

// A side whose process is stuck (its socket accepts but nothing answers)
// is reported as such, in bounded time, next to the other side.
func TestReadAStuckSide(t *testing.T) {
	dir := RunDir(shortTempDir(t))
	ln, err := net.Listen("unix", dir.Control(Primary)) // never accepts
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ps := Read(context.Background(), "kv", dir)
	if ps.Primary.Status != nil || !strings.Contains(ps.Primary.Err, "not answering") {
		t.Errorf("stuck primary: %+v", ps.Primary)
	}
	if ps.Backup.Err != "gone" {
		t.Errorf("absent backup: %+v", ps.Backup)
	}
}

// After a kill of the primary the supervisor protects the survivor again:
// once the backup is live its files take the primary's names (the dead
// primary's log is kept), a new backup listens where the survivor's
// --protect-to points, and the survivor reports the pair protected again.
// A second kill does the same with the next backup.
func TestDetachedReprotectsAfterKill(t *testing.T) {
	p := fakePair(t)
	ctx := context.Background()
	sup, wctx := startProtected(t, p)
	for n := 1; n <= 2; n++ {
		before := Read(ctx, p.Name, p.Dir)
		if before.Backup.Status == nil || before.Backup.Status.Phase != "replaying" {
			t.Fatalf("failover %d: the backup before the kill: %+v", n, before.Backup)
		}
		survivorPID := before.Backup.Status.PID
		if _, _, err := SignalPrimary(p.Dir, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var ps PairStatus
		for {
			ps = Read(ctx, p.Name, p.Dir)
			// Done once the supervisor says so too (a kill before that
			// would strike the survivor while the supervisor still
			// counts it as the backup).
			if ps.Primary.Status != nil && ps.Primary.Status.Reprotected != nil && ps.Backup.Status != nil && ps.Backup.Status.Phase == "replaying" &&
				strings.Count(mustRead(t, p.Dir.LogFile(Supervisor)), "protected again") == n {
				break
			}
			if wctx.Err() != nil {
				t.Fatalf("failover %d: not protected again: %+v", n, ps)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if ps.Primary.Status.PID != survivorPID || ps.Backup.Status.PID == survivorPID {
			t.Fatalf("failover %d: primary pid %d, backup pid %d; want the survivor %d as the primary", n, ps.Primary.Status.PID, ps.Backup.Status.PID, survivorPID)
		}
		if pf, err := readPIDFile(p.Dir.PIDFile(Primary)); err != nil || pf.PID != survivorPID {
			t.Fatalf("failover %d: primary pid file %+v, %v", n, pf, err)
		}
		if _, err := os.Stat(fmt.Sprintf("%s.failed%d", p.Dir.LogFile(Primary), n)); err != nil {
			t.Errorf("failover %d: the dead primary's log was not kept: %v", n, err)
		}
		var text bytes.Buffer
		ps.WriteText(&text)
		if !strings.Contains(text.String(), "protected again after its failover: 3 rounds") {
			t.Errorf("failover %d: status text lacks the re-protection:\n%s", n, text.String())
		}
		if log := mustRead(t, p.Dir.LogFile(Backup)); !strings.Contains(log, fmt.Sprintf("log%d.sock", n+1)) {
			t.Errorf("failover %d: the new backup's log lacks its address log%d.sock:\n%s", n, n+1, log)
		}
	}
	stopped, err := Stop(ctx, p.Dir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(stopped) == 0 || strings.Fields(stopped[0])[0] != Primary {
		t.Errorf("stopped %q, want the primary first", stopped)
	}
	select {
	case <-sup.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor did not exit after its pair was stopped")
	}
}

// A killed backup is replaced: the primary (--protect-again) makes a new
// backup from its running guest where the lost one listened, which the
// supervisor starts; the lost backup's log is kept.
func TestDetachedReplacesALostBackup(t *testing.T) {
	p := fakePair(t)
	ctx := context.Background()
	sup, wctx := startProtected(t, p)
	before := Read(ctx, p.Name, p.Dir)
	bp, err := readPIDFile(p.Dir.PIDFile(Backup))
	if err != nil {
		t.Fatal(err)
	}
	if err := bp.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ps PairStatus
	for {
		ps = Read(ctx, p.Name, p.Dir)
		if ps.Primary.Status != nil && ps.Primary.Status.ProtectedAgain >= 1 && ps.Primary.Status.Phase == "protected" &&
			ps.Backup.Status != nil && ps.Backup.Status.PID != bp.PID && ps.Backup.Status.Phase == "replaying" {
			break
		}
		if wctx.Err() != nil {
			t.Fatalf("the lost backup was not replaced: primary %+v backup %+v (killed pid %d)", ps.Primary.Status, ps.Backup.Status, bp.PID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ps.Primary.Status.PID != before.Primary.Status.PID {
		t.Fatalf("the primary changed: pid %d, was %d", ps.Primary.Status.PID, before.Primary.Status.PID)
	}
	if _, err := os.Stat(p.Dir.LogFile(Backup) + ".lost1"); err != nil {
		t.Errorf("the lost backup's log was not kept: %v", err)
	}
	if log := mustRead(t, p.Dir.LogFile(Backup)); !strings.Contains(log, "unix:"+p.Dir.LogSocket()) {
		t.Errorf("the new backup does not listen where the lost one did:\n%s", log)
	}
	if _, err := Stop(ctx, p.Dir, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sup.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor did not exit after its pair was stopped")
	}
}

// startProtected starts p's fake pair detached and waits until it is
// protected; the context bounds the rest of the test.
func startProtected(t *testing.T, p Pair) (*Detached, context.Context) {
	t.Helper()
	sup, err := Detach(p.Dir, p.Ftctl, []string{"start", "--run-dir", string(p.Dir), "--image", "ok"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(wcancel)
	if err := sup.WaitProtected(wctx); err != nil {
		t.Fatal(err)
	}
	return sup, wctx
}
