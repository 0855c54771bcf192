package instance_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
	"github.com/ftvm/ftvm/testbench/testimage"
)

func TestMain(m *testing.M) {
	var opts []kvmhost.Option
	// Disks are made with the host's mkfs.ext4 (storage.CreateDisk); the
	// nested host gets the same binary, with its libraries.
	if p, err := exec.LookPath("mkfs.ext4"); err == nil && !kvmhost.Inside() {
		opts = append(opts, kvmhost.WithFiles(p))
	}
	os.Exit(testimage.Main(m, opts...))
}

// guest is one running instance.
type guest struct {
	inst    *instance.Instance
	console *guesttest.Console
	cancel  context.CancelFunc
	stopped chan error
}

func startGuest(t testing.TB, cfg instance.Config) *guest {
	t.Helper()
	g := &guest{console: guesttest.NewConsole(), stopped: make(chan error, 1)}
	cfg.Image, cfg.Console = testimage.Dir(t), g.console
	inst, err := instance.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.inst = inst
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() {
		reason, err := inst.Run(ctx)
		if err == nil && reason != vm.StoppedCancelled {
			err = fmt.Errorf("guest %v", reason)
		}
		g.stopped <- err
	}()
	g.console.WaitFor(t, "ftvm-guest ready", g.stopped, 3*time.Minute)
	return g
}

// stop pulls the plug: the VM stops wherever it is, as on a host crash.
func (g *guest) stop(t testing.TB) {
	t.Helper()
	g.cancel()
	if err := <-g.stopped; err != nil {
		t.Fatalf("guest: %v; console:\n%s", err, g.console.String())
	}
	if err := g.inst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestGuestServesThroughForwardAndKeepsAcknowledgedWrites runs the kv
// workload with a NIC on the embedded switch and a disk from storage: a
// client on the host reaches it through a port forward for 1000 byte-exact
// round trips, writes records, the VM is stopped hard and booted again on
// the same disk, and every acknowledged record is there.
func TestGuestServesThroughForwardAndKeepsAcknowledgedWrites(t *testing.T) {
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

	g := startGuest(t, cfg)
	conn, r := guesttest.DialKV(t, fwd)
	start := time.Now()
	const trips = 1000
	for i := 0; i < trips; i++ {
		b := make([]byte, 1+i%64)
		rand.Read(b)
		msg := hex.EncodeToString(b)
		if _, err := fmt.Fprintf(conn, "ECHO %s\n", msg); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil || line != msg+"\n" {
			t.Fatalf("round trip %d: sent %q, got %q (%v)", i, msg, line, err)
		}
	}
	t.Logf("%d ECHO round trips through the forward in %v (%v each)", trips, time.Since(start).Round(time.Millisecond), (time.Since(start) / trips).Round(time.Microsecond))

	want := map[string]string{}
	for i := 0; i < 50; i++ {
		k, v := fmt.Sprintf("key%03d", i), fmt.Sprintf("value-%d-%x", i, i*7919)
		if _, err := fmt.Fprintf(conn, "PUT %s %s\n", k, v); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "OK ") {
			t.Fatalf("PUT %s: %q %v", k, line, err)
		}
		want[k] = v // acknowledged: must survive
	}
	conn.Close()
	g.stop(t)

	g = startGuest(t, cfg)
	defer g.stop(t)
	conn, r = guesttest.DialKV(t, fwd)
	defer conn.Close()
	for k, v := range want {
		fmt.Fprintf(conn, "GET %s\n", k)
		line, err := r.ReadString('\n')
		if err != nil || line != "VALUE "+v+"\n" {
			t.Fatalf("after restart GET %s = %q (%v), want VALUE %s", k, line, err, v)
		}
	}
	t.Logf("all %d acknowledged records survived a hard stop and a restart", len(want))
}

// TestGuestGetsAddressByDHCP boots the guest with ftvm.ip=dhcp: the
// switch's DHCP server hands its fixed MAC the leased address, and the kv
// server answers through a forward to that address.
func TestGuestGetsAddressByDHCP(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	fwd := guesttest.FreeAddr(t)
	sock := guesttest.StartSwitch(t, network.SwitchConfig{
		StaticLeases: map[string]string{instance.DefaultMAC: "192.168.127.9"},
		Forwards:     []network.Forward{{Host: fwd, Guest: "192.168.127.9:7000"}},
	})
	g := startGuest(t, instance.Config{NetSocket: sock, IP: "dhcp", Append: "ftvm.workload=kv ftvm.disk=none"})
	defer g.stop(t)
	if !strings.Contains(g.console.String(), "ftvm-guest net eth0=192.168.127.9/24") || !strings.Contains(g.console.String(), "via=dhcp") {
		t.Fatalf("guest did not take the leased address by DHCP; console:\n%s", g.console.String())
	}
	conn, _ := guesttest.DialKV(t, fwd)
	conn.Close()
}

// TestFailedWorkloadIsSeenOnTheHost: a workload that fails makes the image's
// /init power off after printing its exit status; the host reads that status
// from the console (ftctl run turns it into exit status 6).
func TestFailedWorkloadIsSeenOnTheHost(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	console := guesttest.NewConsole()
	inst, err := instance.New(context.Background(), instance.Config{
		Image: testimage.Dir(t), Console: console, Append: "ftvm.workload=crash", MemoryMiB: 128,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	reason, err := inst.Run(ctx)
	if err != nil || reason != vm.StoppedPowerOff {
		t.Fatalf("guest stopped with %v, %v; want a power-off; console:\n%s", reason, err, console.String())
	}
	status, ok := images.GuestExitStatus(inst.VM.ConsoleOutput())
	if !ok || status != 3 {
		t.Fatalf("exit status %d (found %v), want 3 (workload panic); console:\n%s", status, ok, console.String())
	}
}
