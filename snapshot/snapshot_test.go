package snapshot

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/devices"
	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/virtio"
	"github.com/ftvm/ftvm/hypervisor/vm"
)

const testMiB = 16

type nopClock struct{}

func (nopClock) Now() time.Duration { return 0 }

type nopIRQ struct{}

func (nopIRQ) SetIRQ(uint8, bool) {}

// testMeta is a machine as a snapshot sees it, with device states taken
// from real models so they validate.
func testMeta() *Meta {
	pic := devices.NewPICPair()
	pic.WritePort(devices.PIC1Port, []byte{0x11})
	pit := devices.NewPIT(nopClock{}, pic)
	pit.WritePort(devices.PITPort+3, []byte{0x34})
	uart := devices.NewUART(devices.COM1Port, pic, devices.COM1IRQ, io.Discard)
	uart.WritePort(devices.COM1Port+2, []byte{0x01})
	uart.Receive([]byte("abc"))
	var cpu vm.CPUState
	cpu.Regs.RIP, cpu.Regs.RSP, cpu.Regs.RFLAGS = 0x1000, 0x8000, 2
	cpu.MSRs = []kvm.MSREntry{{Index: 0x174, Data: 0x10}, {Index: 0xc0000082, Data: 0xffffffff81000000}}
	return &Meta{
		Kind: Full,
		Identity: Identity{
			MemoryMiB: testMiB, KernelSHA256: strings.Repeat("ab", 32), Cmdline: "console=ttyS0 ftvm.workload=kv",
			NIC: true, MAC: "52:54:00:12:34:56", Disks: []string{"data"},
			CPUID: []kvm.CPUIDEntry2{{Function: 0, EAX: 0xd}, {Function: 1, EAX: 0x806f8, EDX: 0x178bfbff}, {Function: 7, Index: 0, Flags: 1, EBX: 0x219c91a9}},
		},
		State: vm.MachineState{
			Exit: 123456, GuestTime: 2*time.Second + 345*time.Microsecond, CPU: cpu,
			Devices: vm.DeviceState{
				PIC: pic.State(), PIT: pit.State(), PortB: devices.NewPortB(pit).State(), UART: uart.State(),
				RTC:    devices.NewRTC(nopClock{}, time.Date(2026, 12, 7, 10, 0, 0, 5, time.UTC)).State(),
				PM:     devices.NewACPIPM(nopClock{}, nil, nil).State(),
				Legacy: devices.NewLegacy(nil).State(),
				Virtio: []virtio.TransportState{
					{DeviceType: virtio.DeviceNet, Status: 0xf, DriverFeatures: 1 << 32, Activated: true,
						Queues: []virtio.QueueState{{Size: 256, DescAddr: 0x10000, DriverAddr: 0x11000, DeviceAddr: 0x12000, Ready: true, LastAvail: 7, UsedIdx: 7}, {Size: 256}},
						Device: []byte{1, 0}},
					{DeviceType: virtio.DeviceBlock, Status: 0x4f, Failure: "virtqueue 0: avail idx 9 is 9 entries ahead",
						Queues: []virtio.QueueState{{Size: 128}}},
				},
			},
		},
	}
}

// testMemory is a machine's RAM: mostly zero, a few pages of pattern, one
// run longer than a record holds.
func testMemory() []byte {
	mem := make([]byte, testMiB<<20)
	for _, p := range []int{0, 1, 7, 100, 4095} {
		for i := range PageSize {
			mem[p*PageSize+i] = byte(p + i*7)
		}
	}
	for p := 1000; p < 1000+MaxRunPages+10; p++ {
		mem[p*PageSize+p%PageSize] = 0xee
	}
	mem[len(mem)-1] = 1 // the last byte of the last page
	return mem
}

func write(t testing.TB, m *Meta, mem []byte, written []uint64) ([]byte, Sum) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, m)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind == Full {
		err = w.Memory(mem)
	} else {
		err = w.Pages(mem, written)
	}
	if err != nil {
		t.Fatal(err)
	}
	sum, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), sum
}

func TestFullRoundTrip(t *testing.T) {
	m, mem := testMeta(), testMemory()
	b, sum := write(t, m, mem, nil)
	nonZero := 5 + MaxRunPages + 10 + 1
	if max := nonZero*PageSize + 64<<10; len(b) > max {
		t.Fatalf("snapshot of %d bytes for %d non-zero pages: zero pages not left out?", len(b), nonZero)
	}
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Meta(); !reflect.DeepEqual(got, m) {
		t.Fatalf("meta read back differs:\n%+v\nwrote\n%+v", got, m)
	}
	got := bytes.Repeat([]byte{0x5a}, len(mem)) // a used machine's memory
	if err := r.LoadMemory(got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, mem) {
		t.Fatal("memory read back differs")
	}
	if s, ok := r.Sum(); !ok || s != sum {
		t.Fatalf("sum %v %v, the writer's %v", s, ok, sum)
	}
}

func TestDeltaOnBase(t *testing.T) {
	m, mem := testMeta(), testMemory()
	base, baseSum := write(t, m, mem, nil)

	written := make([]uint64, len(mem)/PageSize/64)
	mark := func(p int) { written[p/64] |= 1 << (p % 64) }
	clear(mem[7*PageSize : 8*PageSize]) // now zero
	mark(7)
	mem[2*PageSize] = 9 // a page that was zero
	mark(2)
	mark(100) // marked, unchanged
	for p := 3000; p < 3030; p++ {
		mem[p*PageSize] = 1
		mark(p)
	}
	dm := testMeta()
	dm.Kind, dm.Base = Delta, baseSum
	dm.State.Exit += 1000
	delta, deltaSum := write(t, dm, mem, written)
	if len(delta) >= len(base) {
		t.Fatalf("delta of %d bytes, its base %d", len(delta), len(base))
	}

	got := make([]byte, len(mem))
	r, err := NewReader(bytes.NewReader(base))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadMemory(got); err != nil {
		t.Fatal(err)
	}
	d, err := NewReader(bytes.NewReader(delta))
	if err != nil {
		t.Fatal(err)
	}
	if d.Meta().Kind != Delta || d.Meta().Base != baseSum || d.Meta().State.Exit != dm.State.Exit {
		t.Fatalf("delta meta: %v base %v exit %d", d.Meta().Kind, d.Meta().Base, d.Meta().State.Exit)
	}
	if err := d.LoadMemory(got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, mem) {
		t.Fatal("base plus delta differs from the memory")
	}
	if s, _ := d.Sum(); s != deltaSum {
		t.Fatal("delta sum differs")
	}
}

func TestCorruptionAndTruncationRefused(t *testing.T) {
	m, mem := testMeta(), testMemory()
	b, _ := write(t, m, mem, nil)
	got := make([]byte, len(mem))

	flipped := bytes.Clone(b)
	flipped[len(flipped)-PageSize] ^= 1 // inside the last page's data
	r, err := NewReader(bytes.NewReader(flipped))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadMemory(got); err == nil || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), "discard") {
		t.Fatalf("a flipped memory byte: %v", err)
	}

	for _, n := range []int{0, 5, 11, 40, len(b) / 2, len(b) - 1} {
		r, err := NewReader(bytes.NewReader(b[:n]))
		if err == nil {
			err = r.LoadMemory(got)
		}
		if err == nil {
			t.Fatalf("truncated to %d of %d bytes: accepted", n, len(b))
		}
	}
	if _, err := NewReader(bytes.NewReader([]byte("FTVMSNAP\x02\x00\x01\x00"))); err == nil || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("version 2: %v", err)
	}
}

func TestWriterRefusesMisuse(t *testing.T) {
	m, mem := testMeta(), testMemory()
	w, err := NewWriter(io.Discard, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Pages(mem, nil); err == nil {
		t.Fatal("pages written into a full snapshot")
	}
	if err := w.Memory(mem[:PageSize]); err == nil {
		t.Fatal("memory of the wrong size accepted")
	}
	dm := testMeta()
	dm.Kind = Delta
	w, _ = NewWriter(io.Discard, dm)
	beyond := make([]uint64, len(mem)/PageSize/64+1)
	beyond[len(beyond)-1] = 1
	if err := w.Pages(mem, beyond); err == nil {
		t.Fatal("a page beyond memory accepted")
	}
	bad := testMeta()
	bad.Identity.MemoryMiB = 1 << 20
	if _, err := NewWriter(io.Discard, bad); err == nil {
		t.Fatal("an impossible memory size accepted")
	}
}

// TestMemoryStreamsWithoutCopying: writing a full snapshot of a machine
// allocates a few small buffers, not a copy of its memory.
func TestMemoryStreamsWithoutCopying(t *testing.T) {
	m, mem := testMeta(), testMemory()
	allocs := testing.AllocsPerRun(3, func() {
		w, err := NewWriter(io.Discard, m)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Memory(mem); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Close(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 64 {
		t.Fatalf("%v allocations per snapshot", allocs)
	}
}

func TestIdentityMismatchNamesFirstDifference(t *testing.T) {
	base := testMeta().Identity
	for _, c := range []struct {
		change func(*Identity)
		want   string
	}{
		{func(i *Identity) { i.MemoryMiB = 32; i.Cmdline = "x" }, "memory differs: the snapshot's machine has 16 MiB, this one 32 MiB"},
		{func(i *Identity) { i.KernelSHA256 = strings.Repeat("cd", 32) }, "kernel differs (the snapshot's sha256 abababababab, this machine's cdcdcdcdcdcd)"},
		{func(i *Identity) { i.Cmdline = "console=ttyS0" }, `kernel command line differs: the snapshot's "console=ttyS0 ftvm.workload=kv", this machine's "console=ttyS0"`},
		{func(i *Identity) { i.NIC, i.MAC = false, "" }, "NIC differs: the snapshot's MAC 52:54:00:12:34:56, this machine's none"},
		{func(i *Identity) { i.Disks = []string{"data", "logs"} }, "disks differ: the snapshot's [data], this machine's [data logs]"},
		{func(i *Identity) { i.CPUID = i.CPUID[:2] }, "CPUID leaf 0x7 index 0: the snapshot's guest has it, this machine's does not"},
		{func(i *Identity) { i.CPUID[1].EDX = 0 }, "CPUID leaf 0x1 index 0 differs (the snapshot's eax=0x806f8 ebx=0x0 ecx=0x0 edx=0x178bfbff, this machine's eax=0x806f8 ebx=0x0 ecx=0x0 edx=0x0)"},
	} {
		own := testMeta().Identity
		c.change(&own)
		got := base.Mismatch(&own)
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("mismatch:\n got %s\nwant %s", got, c.want)
		}
	}
	// Order does not matter, content does.
	own := testMeta().Identity
	own.CPUID[0], own.CPUID[2] = own.CPUID[2], own.CPUID[0]
	if d := base.Mismatch(&own); d != "" {
		t.Fatalf("the same table in another order: %s", d)
	}
	if err := base.Check(&own); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreRefusesAnotherMachine: Restore checks identity and the delta
// chain before it touches the VM (which is nil here: any use would panic).
func TestRestoreChecksBeforeLoading(t *testing.T) {
	m, mem := testMeta(), testMemory()
	full, _ := write(t, m, mem, nil)
	own := testMeta().Identity
	own.Cmdline += " quiet"
	_, err := restoreChecked(t, &own, full)
	if err == nil || !strings.Contains(err.Error(), "snapshot of another machine: kernel command line differs") {
		t.Fatalf("another machine: %v", err)
	}
	dm := testMeta()
	dm.Kind = Delta
	delta, _ := write(t, dm, mem, nil)
	same := testMeta().Identity
	if _, err := restoreChecked(t, &same, delta); err == nil || !strings.Contains(err.Error(), "give its base first") {
		t.Fatalf("a delta alone: %v", err)
	}
	if _, err := restoreChecked(t, &same, full, delta); err == nil || !strings.Contains(err.Error(), "not of the snapshot before it") {
		t.Fatalf("a delta of another base: %v", err)
	}
}

// restoreChecked runs Restore's checks on a VM-less path: the chain and
// identity checks come before any use of the VM.
func restoreChecked(t *testing.T, own *Identity, snaps ...[]byte) (Sum, error) {
	t.Helper()
	var last Sum
	for i, b := range snaps {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return Sum{}, err
		}
		if err := checkChain(i, r.Meta(), last, own); err != nil {
			return Sum{}, err
		}
		if err := r.LoadMemory(make([]byte, own.MemoryMiB<<20)); err != nil {
			return Sum{}, err
		}
		last, _ = r.Sum()
	}
	return last, nil
}

// FuzzDecodeSnapshot feeds the decoder arbitrary bytes: it must never
// panic, never buffer more than one record's bound, and never return pages
// outside the memory or out of order.
func FuzzDecodeSnapshot(f *testing.F) {
	m := testMeta()
	m.Identity.CPUID = m.Identity.CPUID[:1]
	mem := make([]byte, testMiB<<20)
	mem[5*PageSize] = 1
	mem[6*PageSize+9] = 2
	full, sum := write(f, m, mem, nil)
	f.Add(full)
	m.Kind, m.Base = Delta, sum
	written := make([]uint64, len(mem)/PageSize/64)
	written[0] = 1<<5 | 1<<9 | 1<<10
	delta, _ := write(f, m, mem, written)
	f.Add(delta)
	f.Add(full[:len(full)/2])
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		pages := uint64(r.Meta().Identity.MemoryMiB) << 20 / PageSize
		next := uint64(0)
		for {
			run, err := r.Next()
			if errors.Is(err, io.EOF) {
				if _, ok := r.Sum(); !ok {
					t.Fatal("EOF without a verified sum")
				}
				return
			}
			if err != nil {
				return
			}
			if run.First < next || run.Count == 0 || run.First+run.Count > pages {
				t.Fatalf("run %d+%d after page %d, memory of %d pages", run.First, run.Count, next, pages)
			}
			if run.Data != nil && uint64(len(run.Data)) != run.Count*PageSize {
				t.Fatalf("run of %d pages with %d bytes", run.Count, len(run.Data))
			}
			next = run.First + run.Count
		}
	})
}
