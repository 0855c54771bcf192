package devices

import "testing"

func legacyIn(l *Legacy, port uint16) uint8 {
	var b [1]byte
	l.ReadPort(port, b[:])
	return b[0]
}

func TestI8042Reset(t *testing.T) {
	pw := &powerRecorder{}
	l := NewLegacy(pw)
	// Linux's kb_wait before each 0xFE: the input buffer must drain.
	if legacyIn(l, I8042StatusPort)&i8042StatusIBF != 0 {
		t.Fatal("input buffer reads full; reboot=k would spin in kb_wait")
	}
	for _, cmd := range []uint8{0x20, 0x60, 0xaa, 0xad, 0xae, 0xa7, 0xd4, 0xff, 0xf1} {
		l.WritePort(I8042StatusPort, []byte{cmd})
	}
	l.WritePort(I8042Port, []byte{0x00})
	if pw.reset != 0 {
		t.Fatalf("harmless commands requested %d resets", pw.reset)
	}
	l.WritePort(I8042StatusPort, []byte{0xfe})
	if pw.reset != 1 {
		t.Fatal("0xFE on 0x64 did not pulse reset")
	}
	l.WritePort(I8042StatusPort, []byte{0xd1})
	l.WritePort(I8042Port, []byte{0xdf}) // A20 on, reset line high
	if pw.reset != 1 {
		t.Fatal("output port write with reset high reset the machine")
	}
	l.WritePort(I8042StatusPort, []byte{0xd1})
	l.WritePort(I8042Port, []byte{0xde})
	if pw.reset != 2 {
		t.Fatal("output port write with reset low did not reset")
	}
	if pw.off != 0 {
		t.Fatal("reset path requested power-off")
	}
}

// TestI8042LinuxProbeFindsNoController follows i8042_controller_check():
// flush the output buffer, at most I8042_BUFFER_SIZE (16) bytes, and give
// up with "No controller found" if it never drains.
func TestI8042LinuxProbeFindsNoController(t *testing.T) {
	l := NewLegacy(&powerRecorder{})
	flushed := 0
	for legacyIn(l, I8042StatusPort)&i8042StatusOBF != 0 {
		if flushed >= 16 {
			return // -ENODEV: "i8042: No controller found"
		}
		legacyIn(l, I8042Port)
		flushed++
	}
	t.Fatal("output buffer drained: Linux would go on probing and time out reading the CTR")
}

func TestResetControlPorts(t *testing.T) {
	pw := &powerRecorder{}
	l := NewLegacy(pw)
	// Linux's BOOT_CF9_FORCE writes 0x02 then 0x06.
	l.WritePort(ResetPort, []byte{0x02})
	if pw.reset != 0 {
		t.Fatal("0xCF9 without RST_CPU reset")
	}
	if legacyIn(l, ResetPort) != 0x02 {
		t.Fatal("0xCF9 SYS_RST not kept")
	}
	l.WritePort(ResetPort, []byte{0x06})
	if pw.reset != 1 {
		t.Fatal("0xCF9 RST_CPU did not reset")
	}
	if got := legacyIn(l, Port92); got&port92A20 == 0 {
		t.Fatalf("port 0x92 = %#x, want A20 enabled", got)
	}
	l.WritePort(Port92, []byte{0x02})
	if pw.reset != 1 {
		t.Fatal("port 0x92 A20 write reset")
	}
	l.WritePort(Port92, []byte{0x03})
	if pw.reset != 2 {
		t.Fatal("port 0x92 bit 0 did not reset")
	}
	if legacyIn(l, Port92)&port92Reset != 0 {
		t.Fatal("port 0x92 reset bit stuck")
	}
}

func TestDebugPort(t *testing.T) {
	pw := &powerRecorder{}
	l := NewLegacy(pw)
	for i := 0; i < 256; i++ {
		l.WritePort(DebugPort, []byte{uint8(i)})
	}
	if legacyIn(l, DebugPort) != 0xff || pw.reset != 0 || pw.off != 0 {
		t.Fatal("debug port is not inert")
	}
	var b [2]byte
	l.ReadPort(Port92, b[:])
	if b[1] != 0xff {
		t.Fatal("wide read of a byte port not padded with 0xff")
	}
}

func TestLegacyReset(t *testing.T) {
	l := NewLegacy(nil) // nil PowerControl: requests are dropped, no panic
	l.WritePort(ResetPort, []byte{0x0e})
	l.WritePort(Port92, []byte{0xc1})
	l.WritePort(I8042StatusPort, []byte{0xd1})
	l.Reset()
	l.WritePort(I8042Port, []byte{0x00}) // the 0xD1 was forgotten
	if legacyIn(l, ResetPort) != 0 || legacyIn(l, Port92) != port92A20 {
		t.Fatal("Reset kept register state")
	}
	l.ReadPort(DebugPort, nil)
	l.WritePort(DebugPort, nil)
}
