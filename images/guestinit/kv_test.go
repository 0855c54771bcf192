package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testenv"
)

// startKV runs the kv workload in-process on a free port and returns its
// address and a function that stops it and returns its error.
func startKV(t *testing.T, dataDir string) (string, func() error) {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- kvWorkload(ctx, Config{Workload: "kv", Port: 0, DataDir: dataDir}, pw)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	re := regexp.MustCompile(`^ftvm-guest kv listening addr=\S+:(\d+) store=`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			go io.Copy(io.Discard, pr)
			return "127.0.0.1:" + m[1], func() error { cancel(); return <-done }
		}
		t.Log(sc.Text())
	}
	cancel()
	t.Fatalf("kv workload ended without a listening line: %v", <-done)
	return "", nil
}

func kvDo(t *testing.T, addr string, reqs ...string) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	var out []string
	for _, req := range reqs {
		if _, err := io.WriteString(c, req+"\n"); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", req, err)
		}
		out = append(out, strings.TrimSuffix(line, "\n"))
	}
	return out
}

// TestKVWorkloadRestart: what the workload acknowledged is served again
// by a new workload process on the same data directory.
func TestKVWorkloadRestart(t *testing.T) {
	dir := t.TempDir()
	addr, stop := startKV(t, dir)
	got := kvDo(t, addr, "PUT a 1", "PUT b two words", "PUT a 3", "ECHO hi", "GET a")
	if strings.Join(got, "|") != "OK 1|OK 2|OK 3|hi|VALUE 3" {
		t.Fatalf("%q", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("workload: %v", err)
	}
	// A crash mid-write leaves a partial record: the restart drops it.
	f, err := os.OpenFile(filepath.Join(dir, kvLogName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{40, 0, 0, 0, 1, 2})
	f.Close()
	addr, stop = startKV(t, dir)
	defer stop()
	got = kvDo(t, addr, "GET a", "GET b", "GET c", "STATS")
	if got[0] != "VALUE 3" || got[1] != "VALUE two words" || got[2] != "NOTFOUND" || !strings.HasPrefix(got[3], "STATS keys=2 seq=3 ") {
		t.Fatalf("after restart: %q", got)
	}
}

func TestKVWorkloadMemory(t *testing.T) {
	addr, stop := startKV(t, "")
	defer stop()
	if got := kvDo(t, addr, "PUT k v", "GET k", "STATS"); got[1] != "VALUE v" || !strings.Contains(got[2], "store=memory") {
		t.Fatalf("%q", got)
	}
}

// TestMountDisk mounts an ext4 image through a loop device the way PID 1
// mounts /dev/vda, and unmounts it.
func TestMountDisk(t *testing.T) {
	testenv.NeedRoot(t, "mount")
	testenv.NeedTools(t, "mkfs.ext4", "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		testenv.Skipf(t, "no loop devices here: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	mp := filepath.Join(dir, "data")
	ok, err := mountDisk(context.Background(), DiskConfig{Device: dev, Explicit: true, FSType: "ext4", MountPoint: mp})
	if err != nil || !ok {
		t.Fatalf("mount: %v %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(mp, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unmountDisk(mp); err != nil {
		t.Fatal(err)
	}
	// Wrong filesystem type: a clear error naming device and type.
	_, err = mountDisk(context.Background(), DiskConfig{Device: dev, Explicit: true, FSType: "vfat", MountPoint: mp})
	if err == nil || !strings.Contains(err.Error(), "mount "+dev+" on "+mp+" as vfat") {
		t.Fatalf("mount as vfat: %v", err)
	}
}

func TestMountDiskMissing(t *testing.T) {
	dc := DiskConfig{Device: "/dev/ftvm-no-such-disk", FSType: "ext4", MountPoint: t.TempDir()}
	if ok, err := mountDisk(context.Background(), dc); ok || err != nil {
		t.Fatalf("default disk missing: %v %v, want silently skipped", ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	dc.Explicit = true
	if _, err := mountDisk(ctx, dc); err == nil || !strings.Contains(err.Error(), "/dev/ftvm-no-such-disk did not appear") {
		t.Fatalf("explicit disk missing: %v", err)
	}
}
