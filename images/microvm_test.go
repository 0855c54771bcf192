package images

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/hostsetup"
	"github.com/ftvm/ftvm/internal/testenv"
)

// qemuVM is a QEMU guest running in the background, its console captured.
type qemuVM struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (v *qemuVM) Write(p []byte) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.out.Write(p)
}

func (v *qemuVM) console() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.out.String()
}

// waitFor waits until the console matches re and returns the match.
func (v *qemuVM) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(v.console()); m != nil {
			return m
		}
		select {
		case <-v.done:
			if m := re.FindStringSubmatch(v.console()); m != nil {
				return m
			}
			t.Fatalf("QEMU exited before %q:\n%s", re, v.console())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no %q within %s:\n%s", re, timeout, v.console())
	return nil
}

// kill ends QEMU at once, as a crash of the host process would.
func (v *qemuVM) kill() {
	v.cmd.Process.Kill()
	<-v.done
}

// startMicrovm boots the image on QEMU's microvm machine, whose devices
// are virtio-mmio like our VMM's. With acpi=off QEMU declares them on the
// kernel command line (virtio_mmio.device=...), as our VMM does; the price
// is no ACPI power-off, so the guest halts and the test ends QEMU.
func startMicrovm(t *testing.T, dir string, m Manifest, disk string, hostPort int, cmdline string) *qemuVM {
	t.Helper()
	v := &qemuVM{done: make(chan struct{})}
	v.cmd = exec.Command("qemu-system-x86_64",
		"-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "256",
		"-M", "microvm,pit=on,pic=on,rtc=on,acpi=off",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", filepath.Join(dir, m.BzImage), "-initrd", filepath.Join(dir, m.Initrd),
		"-append", m.Cmdline+" "+cmdline,
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:7000", hostPort),
		"-device", "virtio-net-device,netdev=n0",
		"-drive", "file="+disk+",format=raw,if=none,id=d0",
		"-device", "virtio-blk-device,drive=d0")
	v.cmd.Stdout, v.cmd.Stderr = v, v
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.done) }()
	t.Cleanup(v.kill)
	return v
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// kvClient talks to the guest's kv workload through QEMU's port forward.
type kvClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialKV(t *testing.T, port int) *kvClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	return &kvClient{c, bufio.NewReader(c)}
}

func (k *kvClient) do(t *testing.T, req string) string {
	t.Helper()
	if _, err := k.c.Write([]byte(req + "\n")); err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	line, err := k.r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	return strings.TrimSuffix(line, "\n")
}

// testMicrovmNetDisk: the guest gets its address by DHCP from QEMU's user
// network, mounts an ext4 disk, serves kv through a port forward (1000
// byte-exact ECHO round trips), is killed after acknowledging PUTs, and a
// second boot on the same disk serves every acknowledged value. A last
// boot with no workload ends with the disk unmounted: the image is clean.
func testMicrovmNetDisk(t *testing.T, dir string, m Manifest) {
	if err := hostsetup.Ensure(context.Background(), os.Stderr, hostsetup.Requirement{Path: "qemu-system-x86_64", Package: "qemu-system-x86"}); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skipf(t, "needs %s", tool)
		}
	}
	disk := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", disk, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	listening := regexp.MustCompile(`ftvm-guest kv listening addr=\S+ store=/data/kv.log records=(\d+)`)
	kvCmdline := "ftvm.workload=kv ftvm.ip=dhcp ftvm.disk=/dev/vda"

	port := freePort(t)
	vm := startMicrovm(t, dir, m, disk, port, kvCmdline)
	vm.waitFor(t, regexp.MustCompile(`ftvm-guest net eth0=10\.0\.2\.15/24 gw=10\.0\.2\.2 .*via=dhcp`), 90*time.Second)
	vm.waitFor(t, regexp.MustCompile(`ftvm-guest disk dev=/dev/vda mount=/data fs=ext4`), 10*time.Second)
	vm.waitFor(t, regexp.MustCompile(`ftvm-guest ready clocksource=`), 10*time.Second)
	if got := vm.waitFor(t, listening, 30*time.Second); got[1] != "0" {
		t.Fatalf("fresh disk has %s records", got[1])
	}
	k := dialKV(t, port)
	start := time.Now()
	for i := range 1000 {
		text := fmt.Sprintf("round trip %d \x01\xfe %s", i, strings.Repeat("x", i%100))
		if got := k.do(t, "ECHO "+text); got != text {
			t.Fatalf("ECHO %d: %q", i, got)
		}
	}
	t.Logf("1000 ECHO round trips through the port forward in %s", time.Since(start).Round(time.Millisecond))
	const puts = 50
	for i := range puts {
		if got := k.do(t, fmt.Sprintf("PUT key%d value %d", i%10, i)); got != fmt.Sprintf("OK %d", i+1) {
			t.Fatalf("PUT %d: %q", i, got)
		}
	}
	k.c.Close()
	vm.kill() // no clean shutdown: only fsync'd data survives

	port = freePort(t)
	vm = startMicrovm(t, dir, m, disk, port, kvCmdline)
	if got := vm.waitFor(t, listening, 120*time.Second); got[1] != fmt.Sprint(puts) {
		t.Fatalf("second boot replayed %s records, want %d", got[1], puts)
	}
	k = dialKV(t, port)
	for i := range 10 {
		if got, want := k.do(t, fmt.Sprintf("GET key%d", i)), fmt.Sprintf("VALUE value %d", puts-10+i); got != want {
			t.Errorf("after restart GET key%d = %q, want %q", i, got, want)
		}
	}
	k.c.Close()
	vm.kill()

	vm = startMicrovm(t, dir, m, disk, freePort(t), "ftvm.workload=none ftvm.disk=/dev/vda")
	vm.waitFor(t, regexp.MustCompile(`(?s)ftvm-guest exit status=0\s.*reboot: System halted`), 120*time.Second)
	vm.kill()
	if strings.Contains(vm.console(), "ftvm-guest warning") {
		t.Errorf("warnings on the console:\n%s", vm.console())
	}
	if out, err := exec.Command("e2fsck", "-n", disk).CombinedOutput(); err != nil || !strings.Contains(string(out), "clean") {
		t.Errorf("the disk is not clean after power-off (unmount missing?): %v\n%s", err, out)
	}
}
