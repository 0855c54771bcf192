package instance_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

// kvDo sends one kv request line on conn and returns the answer line.
func kvDo(conn net.Conn, r *bufio.Reader, req string) (string, error) {
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return "", err
	}
	if _, err := fmt.Fprintf(conn, "%s\n", req); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

// TestRestoredGuestKeepsKeysAndConnections boots the kv guest with a NIC on
// the switch and an ext4 data disk, PUTs keys, snapshots it while it runs
// and stops it at that same exit, and restores a second VM from the
// snapshot on the same disk and switch: the keys read back, new PUTs work,
// and the client's connection from before the snapshot carries on (the
// guest's TCP state is in the snapshot, the switch kept its end).
func TestRestoredGuestKeepsKeysAndConnections(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	tmp := t.TempDir()
	fwd := guesttest.FreeAddr(t)
	sock := guesttest.StartSwitch(t, network.SwitchConfig{Forwards: []network.Forward{{Host: fwd, Guest: "192.168.127.2:7000"}}})
	storeDir := filepath.Join(tmp, "storage")
	store, err := storage.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateDisk(context.Background(), "data", 32<<20, storage.CreateOptions{Filesystem: storage.FilesystemExt4}); err != nil {
		t.Fatal(err)
	}
	cfg := instance.Config{
		NetSocket: sock, IP: "192.168.127.2/24",
		Disks: []string{"data"}, StorageDir: storeDir,
		Append: "ftvm.workload=kv ftvm.port=7000", MemoryMiB: 256,
	}

	start := time.Now()
	g := startGuest(t, cfg)
	conn, r := guesttest.DialKV(t, fwd)
	defer conn.Close()
	booted := time.Since(start)
	want := map[string]string{}
	for i := 0; i < 20; i++ {
		k, v := fmt.Sprintf("key%02d", i), fmt.Sprintf("before-%d", i)
		if line, err := kvDo(conn, r, "PUT "+k+" "+v); err != nil || !strings.HasPrefix(line, "OK ") {
			t.Fatalf("PUT %s: %q %v", k, line, err)
		}
		want[k] = v
	}

	if _, err := g.inst.Identity(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(tmp, "kv.snap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	snapStart := time.Now()
	sum, err := g.inst.Snapshot(context.Background(), bw, g.cancel)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(snapStart)
	f.Close()
	if err := <-g.stopped; err != nil {
		t.Fatalf("guest: %v", err)
	}
	if err := g.inst.Close(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(file)

	restoreStart := time.Now()
	console := guesttest.NewConsole()
	cfg.Image, cfg.Console = testimage.Dir(t), console
	inst, err := instance.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err = os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	got, err := inst.Restore(bufio.NewReaderSize(f, 1<<20))
	f.Close()
	if err != nil || got != sum {
		t.Fatalf("restore: %v (sum %v, taken %v)", err, got, sum)
	}
	restored := time.Since(restoreStart)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	runStart := time.Now()
	go func() {
		reason, err := inst.Run(ctx)
		if err == nil && reason != vm.StoppedCancelled {
			err = fmt.Errorf("restored guest %v", reason)
		}
		stopped <- err
	}()
	defer func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Errorf("%v; console:\n%s", err, console.String())
		}
		inst.Close()
	}()

	// The connection made before the snapshot.
	line, err := kvDo(conn, r, "GET key07")
	oldConn := err == nil && line == "VALUE before-7\n"
	firstAnswer := time.Since(runStart)
	if !oldConn {
		t.Logf("the connection from before the snapshot did not carry on: %q %v", line, err)
	}

	conn2, r2 := guesttest.DialKV(t, fwd)
	defer conn2.Close()
	for k, v := range want {
		if line, err := kvDo(conn2, r2, "GET "+k); err != nil || line != "VALUE "+v+"\n" {
			t.Fatalf("after restore GET %s = %q (%v), want VALUE %s", k, line, err, v)
		}
	}
	for i := 0; i < 10; i++ {
		k, v := fmt.Sprintf("new%02d", i), fmt.Sprintf("after-%d", i)
		if line, err := kvDo(conn2, r2, "PUT "+k+" "+v); err != nil || !strings.HasPrefix(line, "OK ") {
			t.Fatalf("PUT %s after restore: %q %v", k, line, err)
		}
		if line, err := kvDo(conn2, r2, "GET "+k); err != nil || line != "VALUE "+v+"\n" {
			t.Fatalf("GET %s after restore = %q (%v)", k, line, err)
		}
	}
	if oldConn {
		if line, err := kvDo(conn, r, "PUT old after"); err != nil || !strings.HasPrefix(line, "OK ") {
			t.Fatalf("PUT on the connection from before the snapshot: %q %v", line, err)
		}
	}
	t.Logf("booted and served in %v; snapshot %v (%d MiB on disk of 256) written in %v; restored in %v, answered %v after Run (old connection carried on: %v); %d keys read back, 10 new PUTs",
		booted.Round(time.Millisecond), sum.String()[:12], fi.Size()>>20, took.Round(time.Millisecond), restored.Round(time.Millisecond), firstAnswer.Round(time.Millisecond), oldConn, len(want))
}
