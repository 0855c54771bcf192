package vm

import "testing"

type fakeMMIO struct{ reads, writes int }

func (f *fakeMMIO) ReadMMIO(addr uint64, data []byte)  { f.reads++ }
func (f *fakeMMIO) WriteMMIO(addr uint64, data []byte) { f.writes++ }

func TestMMIOBus(t *testing.T) {
	var b mmioBus
	a, c := &fakeMMIO{}, &fakeMMIO{}
	if err := b.register(0xd0001000, 0x1000, c); err != nil {
		t.Fatal(err)
	}
	if err := b.register(0xd0000000, 0x1000, a); err != nil {
		t.Fatal(err)
	}
	if err := b.register(0xd0000800, 0x1000, a); err == nil {
		t.Fatal("overlapping window accepted")
	}
	if err := b.register(^uint64(0)-10, 0x1000, a); err == nil {
		t.Fatal("wrapping window accepted")
	}
	for addr, want := range map[uint64]*fakeMMIO{
		0xd0000000: a, 0xd0000fff: a, 0xd0001000: c, 0xd0001ffc: c, 0xd0002000: nil, 0xcfffffff: nil,
	} {
		got := b.find(addr)
		if (want == nil) != (got == nil) || (want != nil && got.(*fakeMMIO) != want) {
			t.Errorf("find(%#x) = %v, want %v", addr, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { b.find(0xd0001004) }); n != 0 {
		t.Fatalf("find allocates %v times", n)
	}
}
