package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/snapshot"
)

type nopClock struct{}

func (nopClock) Now() time.Duration { return 0 }

type nopIRQ struct{}

func (nopIRQ) SetIRQ(uint8, bool) {}

// machineState is a machine state that validates, from real device models.
func machineState() vm.MachineState {
	pic := devices.NewPICPair()
	pit := devices.NewPIT(nopClock{}, pic)
	pit.WritePort(devices.PITPort+3, []byte{0x34})
	return vm.MachineState{Devices: vm.DeviceState{
		PIC: pic.State(), PIT: pit.State(), PortB: devices.NewPortB(pit).State(),
		UART:   devices.NewUART(devices.COM1Port, nopIRQ{}, devices.COM1IRQ, io.Discard).State(),
		RTC:    devices.NewRTC(nopClock{}, time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)).State(),
		PM:     devices.NewACPIPM(nopClock{}, nil, nil).State(),
		Legacy: devices.NewLegacy(nil).State(),
	}}
}

func TestLineWatchSeesALineSplitAcrossWrites(t *testing.T) {
	var out bytes.Buffer
	l := newLineWatch(&out, readyLine)
	for _, p := range []string{"boot ff", "tvm-guest re", "ftvm-gu", "est rea", "dy clocksource=acpi_pm\n", "more ftvm-guest ready\n"} {
		select {
		case <-l.seen:
			t.Fatalf("seen before %q", p)
		default:
		}
		l.Write([]byte(p))
		if strings.HasPrefix(p, "dy") {
			break
		}
	}
	select {
	case <-l.seen:
	default:
		t.Fatal("the ready line split across writes was not seen")
	}
	if !strings.Contains(out.String(), "ftvm-guest ready clocksource") {
		t.Fatalf("output not passed on: %q", out.String())
	}
}

// TestRunChecksSnapshotFlagsBeforeBooting: a snapshot of another machine
// is refused naming the difference and what to do, and a snapshot file
// is never written over.
func TestRunChecksSnapshotFlagsBeforeBooting(t *testing.T) {
	img := imageWithWorkloads(t, "kv", "none")
	dir := t.TempDir()
	id, err := instance.Identity(instance.Config{Image: img, MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, id snapshot.Identity) string {
		var b bytes.Buffer
		w, err := snapshot.NewWriter(&b, &snapshot.Meta{Kind: snapshot.Full, Identity: id, State: machineState()})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Memory(make([]byte, id.MemoryMiB<<20)); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Close(); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, b.Bytes(), 0o644)
		return p
	}
	other := id
	other.Cmdline += " ftvm.workload=kv"
	otherSnap := write("other.snap", other)
	notSnap := filepath.Join(dir, "not.snap")
	os.WriteFile(notSnap, []byte("hello, I am a disk image"), 0o644)

	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"another machine": {[]string{"--restore", otherSnap}, "kernel command line differs"},
		"other memory":    {[]string{"--restore", otherSnap, "--mem", "128"}, "memory differs: the snapshot's machine has 256 MiB, this one 128 MiB"},
		"not a snapshot":  {[]string{"--restore", notSnap}, "not a snapshot"},
		"missing":         {[]string{"--restore", filepath.Join(dir, "nope")}, "nope"},
		"exists":          {[]string{"--snapshot-at-ready", notSnap}, "the file exists"},
		"both":            {[]string{"--snapshot-at-ready", filepath.Join(dir, "new"), "--restore", otherSnap}, "not both"},
		"pair":            {[]string{"--snapshot-at-ready", filepath.Join(dir, "new"), "--role", "primary", "--peer", "unix:/nonexistent"}, "--role none"},
		"backup":          {[]string{"--restore", otherSnap, "--role", "backup", "--listen", "unix:" + filepath.Join(dir, "l.sock")}, "kernel command line differs"},
	} {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"run", "--image", img, "--console", "none"}, tc.args...)
			_, err := runFtctlTimeout(t, 30*time.Second, args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
	if got, _ := os.ReadFile(notSnap); string(got) != "hello, I am a disk image" {
		t.Fatalf("an existing file was written over: %q", got)
	}
	_, err = runFtctlTimeout(t, 30*time.Second, "run", "--image", img, "--console", "none", "--restore", otherSnap)
	if err == nil || !strings.Contains(err.Error(), "give ftctl run the machine options the snapshot was taken with") {
		t.Fatalf("no advice: %v", err)
	}
}
