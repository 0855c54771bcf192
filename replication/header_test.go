package replication

import (
	"strings"
	"testing"
	"time"
)

func sampleHeader() startHeader {
	return startHeader{
		Version: headerVersion, KernelSHA256: "ab12", InitrdSHA256: "cd34", Cmdline: "console=ttyS0",
		MemoryMiB: 256, WallTime: time.Date(2026, 11, 26, 2, 0, 0, 0, time.UTC),
		NIC: true, MAC: "52:54:00:12:34:56", Disks: []string{"data"},
		CPUID: []cpuidLeaf{
			{Function: 0, EAX: 0xd, EBX: 0x68747541},
			{Function: 1, EAX: 0x830f10, ECX: 0x80002001, EDX: 0x178bfbff},
			{Function: 7, Index: 0, Flags: 1, EBX: 0x219c01a9},
			{Function: 7, Index: 1, Flags: 1},
		},
	}
}

func TestHeaderMismatchNamesTheFirstDifference(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(h *startHeader)
		want   []string // all in the sentence; none means "no mismatch"
	}{
		{"same", func(*startHeader) {}, nil},
		{"wall time is the primary's to choose", func(h *startHeader) { h.WallTime = h.WallTime.Add(time.Hour) }, nil},
		{"kernel", func(h *startHeader) { h.KernelSHA256 = "ff00" }, []string{"kernel differs", "ab12", "ff00", "same image"}},
		{"initrd", func(h *startHeader) { h.InitrdSHA256 = "" }, []string{"initrd differs"}},
		{"cmdline", func(h *startHeader) { h.Cmdline += " quiet" }, []string{`command line differs`, `"console=ttyS0 quiet"`}},
		{"memory", func(h *startHeader) { h.MemoryMiB = 512 }, []string{"memory differs: primary 512 MiB, backup 256 MiB"}},
		{"mac", func(h *startHeader) { h.MAC = "52:54:00:00:00:01" }, []string{"NIC differs"}},
		{"no nic", func(h *startHeader) { h.NIC, h.MAC = false, "" }, []string{"NIC differs"}},
		{"disks", func(h *startHeader) { h.Disks = nil }, []string{"disks differ"}},
		{"another snapshot", func(h *startHeader) { h.Snapshot = strings.Repeat("5a", 32) },
			[]string{"start differs: primary starts from snapshot 5a5a5a5a5a5a, backup boots from power-on", "--restore"}},
		{"cpuid register", func(h *startHeader) { h.CPUID[2].EBX &^= 1 << 5 },
			[]string{"CPUID leaf 0x7 index 0 differs", "ebx=0x219c0189", "backup eax=0x0 ebx=0x219c01a9", "same CPU model"}},
		{"cpuid leaf only on the primary", func(h *startHeader) {
			h.CPUID = append(h.CPUID, cpuidLeaf{Function: 0x80000001, ECX: 1})
		}, []string{"CPUID leaf 0x80000001 index 0: the primary's guest has it, the backup's does not"}},
		{"cpuid leaf only on the backup", func(h *startHeader) { h.CPUID = h.CPUID[:3] },
			[]string{"CPUID leaf 0x7 index 1: the backup's guest has it, the primary's does not"}},
		{"cpuid order does not matter", func(h *startHeader) {
			h.CPUID[0], h.CPUID[3] = h.CPUID[3], h.CPUID[0]
		}, nil},
		{"the first cpuid difference is named", func(h *startHeader) { h.CPUID[1].EDX = 0; h.CPUID[2].EBX = 0 },
			[]string{"CPUID leaf 0x1 index 0 differs"}},
		{"configuration before cpuid", func(h *startHeader) { h.MemoryMiB = 128; h.CPUID = nil },
			[]string{"memory differs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary, backup := sampleHeader(), sampleHeader()
			tc.change(&primary)
			got := primary.mismatch(backup)
			if len(tc.want) == 0 {
				if got != "" {
					t.Fatalf("mismatch %q, want none", got)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Fatalf("mismatch %q does not say %q", got, w)
				}
			}
		})
	}
}

func TestHeaderRoundTripKeepsCPUID(t *testing.T) {
	h := sampleHeader()
	b, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := got.mismatch(h); d != "" || len(got.CPUID) != len(h.CPUID) {
		t.Fatalf("round trip: %q, %d leaves", d, len(got.CPUID))
	}
}

func TestDecodeHeaderRefuses(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"version":3}`, "start header version 3, this backup reads 4 (run the same ftvm version on both sides)"},
		{`{`, "start header:"},
		{`{"version":4,"cpuid":[{"fn":"x"}]}`, "start header:"},
		{`{"version":4,"memory_mib":` + strings.Repeat("1", maxHeader) + `}`, "exceeds"},
	} {
		_, err := decodeHeader([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decode %.40q: %v, want %q", tc.in, err, tc.want)
		}
	}
}

func FuzzDecodeHeader(f *testing.F) {
	b, _ := sampleHeader().encode()
	f.Add(b)
	f.Add([]byte(`{"version":4}`))
	f.Add([]byte(`{"version":4,"cpuid":[{"fn":1},{"fn":1}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHeader(b)
		if err != nil {
			return
		}
		_ = h.mismatch(sampleHeader()) // any decoded header compares without panicking
		// Accepted: it re-encodes and decodes to the same header.
		again, err := h.encode()
		if err != nil {
			t.Fatal(err)
		}
		h2, err := decodeHeader(again)
		if err != nil || h2.mismatch(h) != "" || !h2.WallTime.Equal(h.WallTime) {
			t.Fatalf("round trip: %v %q", err, h2.mismatch(h))
		}
	})
}
