package replication

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
)

// headerVersion is the start header's format, and of the log that follows
// it: 4 since the log's checkpoints travel in page chunks (replay.Version 2),
// so a backup of another version refuses the primary at the start, naming
// both versions, instead of failing at the first checkpoint.
const headerVersion = 4

// startHeader is the log's first entry: what the primary booted, so the
// backup starts from the same initial state or refuses with a reason.
type startHeader struct {
	Version      int       `json:"version"`
	KernelSHA256 string    `json:"kernel_sha256"`
	InitrdSHA256 string    `json:"initrd_sha256"`
	Cmdline      string    `json:"cmdline"`
	MemoryMiB    int       `json:"memory_mib"`
	WallTime     time.Time `json:"wall_time"`
	NIC          bool      `json:"nic"`
	MAC          string    `json:"mac"`
	Disks        []string  `json:"disks"`
	// CPUID is the table the guest's CPUID instruction answers from: what
	// the host's KVM supports minus what the determinism contract hides.
	CPUID []cpuidLeaf `json:"cpuid"`
	// Snapshot is the Sum (hex) of the snapshot both sides start from
	// instead of booting (fast start), "" for a boot from power-on.
	Snapshot string `json:"snapshot,omitempty"`
	// Transfer: the primary runs already and sends its state before the
	// log (a backup made from a running VM, transfer.go); the backup
	// neither boots nor restores a file.
	Transfer bool `json:"transfer,omitempty"`
}

// cpuidLeaf is one CPUID answer: function (EAX) and index (ECX) in, four
// registers out. Flags say whether the index matters.
type cpuidLeaf struct {
	Function uint32 `json:"fn"`
	Index    uint32 `json:"idx"`
	Flags    uint32 `json:"flags,omitempty"`
	EAX      uint32 `json:"eax"`
	EBX      uint32 `json:"ebx"`
	ECX      uint32 `json:"ecx"`
	EDX      uint32 `json:"edx"`
}

func cpuidLeaves(es []kvm.CPUIDEntry2) []cpuidLeaf {
	out := make([]cpuidLeaf, len(es))
	for i, e := range es {
		out[i] = cpuidLeaf{e.Function, e.Index, e.Flags, e.EAX, e.EBX, e.ECX, e.EDX}
	}
	return out
}

// maxHeader bounds the header a backup decodes (untrusted bytes).
const maxHeader = 64 << 10

func newHeader(cfg instance.Config, wall time.Time) (startHeader, error) {
	boot, err := instance.ResolveBoot(cfg)
	if err != nil {
		return startHeader{}, err
	}
	if boot.KernelSHA256 == "" {
		if boot.KernelSHA256, err = fileSHA256(boot.Kernel); err != nil {
			return startHeader{}, err
		}
	}
	if boot.InitrdSHA256 == "" && boot.Initrd != "" {
		if boot.InitrdSHA256, err = fileSHA256(boot.Initrd); err != nil {
			return startHeader{}, err
		}
	}
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 256 // vm's default, spelled out so both sides compare it
	}
	cpu, err := vm.GuestCPUID("")
	if err != nil {
		return startHeader{}, fmt.Errorf("the guest's CPUID: %w", err)
	}
	mac := cfg.MAC
	if mac == "" && cfg.NetSocket != "" {
		mac = instance.DefaultMAC
	}
	return startHeader{
		Version: headerVersion, KernelSHA256: boot.KernelSHA256, InitrdSHA256: boot.InitrdSHA256,
		Cmdline: boot.Cmdline, MemoryMiB: mem, WallTime: wall.UTC(),
		NIC: cfg.NetSocket != "", MAC: strings.ToLower(mac), Disks: cfg.Disks,
		CPUID: cpuidLeaves(cpu),
	}, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (h startHeader) encode() ([]byte, error) { return json.Marshal(h) }

func decodeHeader(b []byte) (startHeader, error) {
	var h startHeader
	if len(b) > maxHeader {
		return h, fmt.Errorf("start header of %d bytes exceeds %d", len(b), maxHeader)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("start header: %w", err)
	}
	if h.Version != headerVersion {
		return h, fmt.Errorf("start header version %d, this backup reads %d (run the same ftvm version on both sides)", h.Version, headerVersion)
	}
	return h, nil
}

// mismatch names the first difference between the primary's header and
// the backup's own, and what to do about it, or "".
func (h startHeader) mismatch(own startHeader) string {
	if d := h.configMismatch(own); d != "" {
		return d + "; start the backup with the same image, memory, command line, NIC, disks and snapshot (--restore)"
	}
	return cpuidMismatch(h.CPUID, own.CPUID)
}

func (h startHeader) configMismatch(own startHeader) string {
	switch {
	case h.KernelSHA256 != own.KernelSHA256:
		return fmt.Sprintf("kernel differs (primary sha256 %.12s, backup %.12s)", h.KernelSHA256, own.KernelSHA256)
	case h.InitrdSHA256 != own.InitrdSHA256:
		return fmt.Sprintf("initrd differs (primary sha256 %.12s, backup %.12s)", h.InitrdSHA256, own.InitrdSHA256)
	case h.Cmdline != own.Cmdline:
		return fmt.Sprintf("kernel command line differs: primary %q, backup %q", h.Cmdline, own.Cmdline)
	case h.MemoryMiB != own.MemoryMiB:
		return fmt.Sprintf("memory differs: primary %d MiB, backup %d MiB", h.MemoryMiB, own.MemoryMiB)
	case h.NIC != own.NIC || h.MAC != own.MAC:
		return fmt.Sprintf("NIC differs: primary %v %s, backup %v %s", h.NIC, h.MAC, own.NIC, own.MAC)
	case strings.Join(h.Disks, ",") != strings.Join(own.Disks, ","):
		return fmt.Sprintf("disks differ: primary %v, backup %v", h.Disks, own.Disks)
	case h.Transfer != own.Transfer:
		return fmt.Sprintf("start differs: the primary runs already and sends its state, the backup %s (leave --restore out)", startText(own.Snapshot))
	case h.Snapshot != own.Snapshot:
		return fmt.Sprintf("start differs: primary %s, backup %s", startText(h.Snapshot), startText(own.Snapshot))
	}
	return ""
}

func startText(sum string) string {
	if sum == "" {
		return "boots from power-on"
	}
	return fmt.Sprintf("starts from snapshot %.12s", sum)
}

// cpuidMismatch names the first CPUID leaf (by function, then index) the
// two sides answer differently, or "".
func cpuidMismatch(primary, backup []cpuidLeaf) string {
	type key struct{ fn, idx uint32 }
	index := func(ls []cpuidLeaf) map[key]cpuidLeaf {
		m := make(map[key]cpuidLeaf, len(ls))
		for _, l := range ls {
			m[key{l.Function, l.Index}] = l
		}
		return m
	}
	pm, bm := index(primary), index(backup)
	keys := make([]key, 0, len(pm)+len(bm))
	for k := range pm {
		keys = append(keys, k)
	}
	for k := range bm {
		if _, ok := pm[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if c := cmp.Compare(a.fn, b.fn); c != 0 {
			return c
		}
		return cmp.Compare(a.idx, b.idx)
	})
	const advice = "; pair hosts with the same CPU model and kernel (KVM) version"
	for _, k := range keys {
		p, inP := pm[k]
		b, inB := bm[k]
		switch {
		case !inB:
			return fmt.Sprintf("CPUID leaf %#x index %d: the primary's guest has it, the backup's does not%s", k.fn, k.idx, advice)
		case !inP:
			return fmt.Sprintf("CPUID leaf %#x index %d: the backup's guest has it, the primary's does not%s", k.fn, k.idx, advice)
		case p != b:
			return fmt.Sprintf("CPUID leaf %#x index %d differs (primary eax=%#x ebx=%#x ecx=%#x edx=%#x, backup eax=%#x ebx=%#x ecx=%#x edx=%#x)%s",
				k.fn, k.idx, p.EAX, p.EBX, p.ECX, p.EDX, b.EAX, b.EBX, b.ECX, b.EDX, advice)
		}
	}
	return ""
}
