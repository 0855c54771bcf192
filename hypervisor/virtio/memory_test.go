package virtio

import "testing"

func TestMemorySlice(t *testing.T) {
	backing := make([]byte, 48)
	ram := backing[16:32:32]
	m := NewMemory(ram)
	max := ^uint64(0)
	for _, c := range []struct {
		addr, n uint64
		ok      bool
	}{
		{0, 0, true}, {0, 16, true}, {15, 1, true}, {16, 0, true},
		{16, 1, false}, {17, 0, false}, {0, 17, false}, {8, 9, false},
		{max, 1, false}, {1, max, false}, {max, max, false}, {max, 0, false},
	} {
		b, err := m.Slice(c.addr, c.n)
		if (err == nil) != c.ok {
			t.Errorf("Slice(%#x, %#x): err %v, want ok=%v", c.addr, c.n, err, c.ok)
			continue
		}
		if err == nil && (uint64(len(b)) != c.n || uint64(cap(b)) != c.n) {
			t.Errorf("Slice(%#x, %#x): len %d cap %d", c.addr, c.n, len(b), cap(b))
		}
	}
	// Zero copy, and append cannot spill into the rest of RAM or beyond.
	b, _ := m.Slice(4, 4)
	b[0] = 9
	if ram[4] != 9 {
		t.Error("Slice copied")
	}
	_ = append(b, 1, 2, 3)
	_ = append(ram, 1)
	for i, v := range backing {
		if (i < 16 || i >= 32) && v != 0 {
			t.Fatalf("byte %d outside RAM written", i)
		}
	}
	if ram[8] != 0 {
		t.Error("append spilled inside RAM")
	}
}

func TestMemoryLittleEndian(t *testing.T) {
	m := NewMemory(make([]byte, 16))
	if err := m.PutUint64(8, 0x0807060504030201); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint16(8); v != 0x0201 {
		t.Errorf("Uint16 %#x", v)
	}
	if v, _ := m.Uint32(12); v != 0x08070605 {
		t.Errorf("Uint32 %#x", v)
	}
	if err := m.PutUint32(0, 0xaabbccdd); err != nil {
		t.Fatal(err)
	}
	if err := m.PutUint16(4, 0xeeff); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint64(0); v != 0x0000eeffaabbccdd {
		t.Errorf("Uint64 %#x", v)
	}
	if _, err := m.Uint64(9); err == nil {
		t.Error("Uint64 past the end")
	}
	if err := m.PutUint16(15, 1); err == nil {
		t.Error("PutUint16 past the end")
	}
	p := make([]byte, 3)
	if err := m.Read(1, p); err != nil || p[0] != 0xcc {
		t.Error(err, p)
	}
	if err := m.Write(14, p); err == nil {
		t.Error("Write past the end")
	}
	if m.Size() != 16 {
		t.Error(m.Size())
	}
}
