package vm_test

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// The memwalk guest (testdata/guests/memwalk.S): 600 steps, step k writes
// one dword in page 0x10 + k%64 and then prints one letter; then '\n' and
// power-off.
const (
	memwalkSteps     = 600
	memwalkFirstPage = 0x10
	memwalkPages     = 64
	// memwalkOutRIP is the address right after the loop's OUT: where RIP
	// is once the OUT is complete.
	memwalkOutRIP = 0x1068
	// codePage holds the guest's code (vm.RawLoadAddress).
	codePage = vm.RawLoadAddress / vm.DirtyPageSize
)

// hookConsole is a guest console that keeps what the guest printed and
// calls back on the vCPU goroutine, inside the OUT exit, after each byte.
type hookConsole struct {
	buf    bytes.Buffer
	onByte func(n int) // n: bytes printed so far
}

func (c *hookConsole) Write(p []byte) (int, error) {
	for _, b := range p {
		c.buf.WriteByte(b)
		if c.onByte != nil {
			c.onByte(c.buf.Len())
		}
	}
	return len(p), nil
}

func newMemwalk(t *testing.T) (*vm.VM, *hookConsole) {
	t.Helper()
	code, err := os.ReadFile("testdata/guests/memwalk.bin")
	if err != nil {
		t.Fatal(err)
	}
	console := &hookConsole{}
	v, err := vm.New(vm.Config{RawCode: code, MemoryMiB: 16, Console: console})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v, console
}

// pagesIn lists the pages set in a dirty bitmap.
func pagesIn(bm []uint64) []int {
	var pages []int
	for w, word := range bm {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			pages = append(pages, w*64+b)
			word &^= 1 << b
		}
	}
	return pages
}

// TestDirtyPagesReportsGuestWrites reads the dirty log at every OUT of the
// memwalk guest: each read must report exactly the one page the guest
// wrote since the previous OUT, and nothing else (not its code page, which
// it only reads, except at the first read, not what the VMM wrote when it
// loaded the guest or later).
func TestDirtyPagesReportsGuestWrites(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	v, console := newMemwalk(t)
	if _, err := v.DirtyPages(nil); err == nil || !strings.Contains(err.Error(), "EnableDirtyLog") {
		t.Fatalf("DirtyPages with logging off: err = %v, want one naming EnableDirtyLog", err)
	}
	if err := v.EnableDirtyLog(); err != nil {
		t.Fatal(err)
	}
	bm, err := v.DirtyPages(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := 16 << 20 / vm.DirtyPageSize / 64; len(bm) != want {
		t.Fatalf("bitmap of %d words for 16 MiB, want %d", len(bm), want)
	}
	if p := pagesIn(bm); len(p) != 0 {
		t.Fatalf("pages %#x dirty before the guest ran (the loader's writes are not the guest's)", p)
	}

	var mismatches []string
	var reads int
	console.onByte = func(n int) {
		var err error
		bm, err = v.DirtyPages(bm) // reuses the buffer
		if err != nil {
			mismatches = append(mismatches, err.Error())
			return
		}
		reads++
		var want []int
		if n <= memwalkSteps {
			want = []int{memwalkFirstPage + (n-1)%memwalkPages}
		}
		got := pagesIn(bm)
		if n == 1 && len(got) > 0 && got[0] == codePage {
			// The first fetch from the code page mapped it, and KVM maps
			// pages writable on any first access and counts them dirty
			// right away (see DirtyPages).
			got = got[1:]
		}
		if !slices.Equal(got, want) && len(mismatches) < 10 {
			mismatches = append(mismatches, fmt.Sprintf("at byte %d: dirty pages %#x, want %#x", n, got, want))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reason, err := v.Run(ctx)
	if err != nil || reason != vm.StoppedPowerOff {
		t.Fatalf("run: %v %v", reason, err)
	}
	for _, m := range mismatches {
		t.Error(m)
	}
	if reads != memwalkSteps+1 {
		t.Fatalf("read the log at %d OUTs, want %d", reads, memwalkSteps+1)
	}
	t.Logf("%d reads of the dirty log, each exactly the page the guest wrote since the previous one", reads)

	// The VMM's own writes through Memory() are not in KVM's log.
	v.Memory()[0x9000] = 1
	if bm, err = v.DirtyPages(bm); err != nil || len(pagesIn(bm)) != 0 {
		t.Fatalf("after a write by the VMM: pages %#x, err %v; want none", pagesIn(bm), err)
	}
	if err := v.DisableDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.DirtyPages(bm); err == nil {
		t.Fatal("DirtyPages after DisableDirtyLog succeeded")
	}
}
