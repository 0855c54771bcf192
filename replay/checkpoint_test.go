package replay

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/hypervisor/vm"
)

// memGuest is a vm.GuestState over a plain memory slice and a vCPU state
// held in memory: what the replayer touches when it checks a digest or
// loads a checkpoint, without KVM. written is what WrittenPages reports
// next (then cleared), as KVM's read-and-clear dirty log does.
type memGuest struct {
	mem      []byte
	cpu      vm.CPUState
	written  []uint64
	restored int // RestoreCPU calls
}

func newMemGuest(pages int) *memGuest {
	g := &memGuest{mem: make([]byte, pages*PageSize)}
	g.cpu.Regs.RIP = 0x1000
	return g
}

func (g *memGuest) CaptureCPU(c *vm.CPUState) error {
	*c = g.cpu
	return nil
}

func (g *memGuest) RestoreCPU(c *vm.CPUState) error {
	g.cpu = *c
	g.restored++
	return nil
}

func (g *memGuest) Memory() []byte { return g.mem }

func (g *memGuest) WrittenPages(into []uint64) ([]uint64, error) {
	words := (len(g.mem)/PageSize + 63) / 64
	into = append(into[:0], make([]uint64, words)...)
	copy(into, g.written)
	clear(g.written)
	return into, nil
}

// markPage makes page p (the guest's write) part of the next WrittenPages.
func (g *memGuest) markPage(p int) {
	for len(g.written) <= p/64 {
		g.written = append(g.written, 0)
	}
	g.written[p/64] |= 1 << (p % 64)
}

// checkpointHead is a Kick at exit 3 and a valid vCPU state (RIP 0x2000).
func checkpointHead(t testing.TB) []Event {
	t.Helper()
	var st vm.CPUState
	st.Regs.RIP = 0x2000
	cpu, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return []Event{NewKick(3), NewCheckpointCPU(3, cpu)}
}

// checkpointLog is checkpointHead followed by the given page entries and a
// mark at exit 4.
func checkpointLog(t testing.TB, pages ...Event) []byte {
	t.Helper()
	evs := append(checkpointHead(t), pages...)
	return encodeAll(t, append(evs, NewExitMark(4, 2, 0x2000)))
}

// TestCheckpointPageOutsideMemory feeds a backup checkpoint pages the
// decoder accepts at and beyond the end of a 4-page memory, up to the
// largest page number the format can carry (whose end, computed as
// address+PageSize, overflows int64). The page at the top loads; every
// other one stops the backup with an error naming the entry, and none
// panics.
func TestCheckpointPageOutsideMemory(t *testing.T) {
	const memPages = 4
	top := int64(memPages-1) * PageSize
	maxPage := int64(math.MaxInt64 / PageSize * PageSize)
	page := filled(PageSize, 0x5a)
	for _, tc := range []struct {
		name string
		ev   Event
		want string // "" when it loads
	}{
		{"top page", NewCheckpointPage(3, top, page), ""},
		{"top zero page", NewCheckpointPage(3, top, make([]byte, PageSize)), ""},
		{"first page past the end", NewCheckpointPage(3, top+PageSize, page), "CheckpointPage at exit #3: address 0x4000 outside the 16384-byte guest memory"},
		{"largest page number", NewCheckpointPage(3, maxPage, page), "CheckpointPage at exit #3: address 0x7ffffffffffff000 outside"},
		{"largest zero page number", NewCheckpointPage(3, maxPage, make([]byte, PageSize)), "CheckpointZero at exit #3: address 0x7ffffffffffff000 outside"},
		{"page below the largest", NewCheckpointPage(3, maxPage-PageSize, page), "CheckpointPage at exit #3: address 0x7fffffffffffe000 outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := NewReplayer([][]byte{checkpointLog(t, tc.ev)})
			if err != nil {
				t.Fatalf("the decoder refused the log: %v", err)
			}
			g := newMemGuest(memPages)
			if tc.ev.Type == CheckpointZero {
				copy(g.mem[top:], page) // something for the zero page to clear
			}
			_, _, err = rep.Next(3, g)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error containing %q", err, tc.want)
				}
				if g.restored != 0 {
					t.Fatal("the vCPU state of a refused checkpoint was loaded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.ev.Data
			if want == nil {
				want = make([]byte, PageSize)
			}
			if !bytes.Equal(g.mem[top:], want) || g.restored != 1 || g.cpu.Regs.RIP != 0x2000 {
				t.Fatalf("top page and vCPU not loaded: RestoreCPU calls %d, RIP %#x", g.restored, g.cpu.Regs.RIP)
			}
		})
	}
}

// A checkpoint whose vCPU state does not decode stops the backup naming the
// entry; memory is untouched.
func TestCheckpointBadCPUState(t *testing.T) {
	log := encodeAll(t, []Event{NewKick(3), NewCheckpointCPU(3, []byte("FTVC garbage")),
		NewCheckpointPage(3, 0, filled(PageSize, 1))})
	rep, err := NewReplayer([][]byte{log})
	if err != nil {
		t.Fatal(err)
	}
	g := newMemGuest(2)
	_, _, err = rep.Next(3, g)
	if err == nil || !strings.Contains(err.Error(), "CheckpointCPU at exit #3: decode vCPU state") {
		t.Fatalf("got %v", err)
	}
	if g.restored != 0 || g.mem[0] != 0 {
		t.Fatal("a checkpoint with a bad vCPU state was partly loaded")
	}
}

// The stream replayer names the batch whose bytes do not decode.
func TestStreamNamesUndecodableBatch(t *testing.T) {
	good := encodeAll(t, []Event{NewExitMark(1, 2, 0x1000)})
	bad := []byte{Version, byte(ClockRead), 2, 0x80} // truncated time delta
	batches := [][]byte{good, bad}
	rep := NewStreamReplayer(func() ([]byte, error) {
		if len(batches) == 0 {
			return nil, errors.New("unreachable")
		}
		b := batches[0]
		batches = batches[1:]
		return b, nil
	})
	err := rep.Exit(3, 0, 0, func() uint64 { return 0 })
	if err == nil || !strings.Contains(err.Error(), "batch 2: replay log: offset 4: ClockRead entry truncated in its time delta") {
		t.Fatalf("got %v", err)
	}
}
