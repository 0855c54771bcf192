package snapshot

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// Identity is what makes two machines the same machine for a snapshot:
// the same things a pair's start header compares. A snapshot loads only
// into a VM whose identity is equal.
type Identity struct {
	MemoryMiB    int
	KernelSHA256 string // hex
	InitrdSHA256 string // hex, "" without an initrd
	Cmdline      string // as the guest sees it, virtio parameters included
	NIC          bool
	MAC          string // lower case, "" without a NIC
	Disks        []string
	// CPUID is the table the guest's CPUID answers from (vm.GuestCPUID).
	CPUID []kvm.CPUIDEntry2
}

// Bounds on an identity, checked before the decoder allocates.
const (
	maxHashText = 128
	maxCmdline  = 16 << 10
	maxMAC      = 64
	maxDisks    = 64
	maxDiskName = 1024
	maxCPUID    = 1024
)

// Mismatch names the first way this machine (own) differs from the one the
// snapshot (id) was taken of, as a sentence, or "" if they are the same.
func (id *Identity) Mismatch(own *Identity) string {
	switch {
	case id.MemoryMiB != own.MemoryMiB:
		return fmt.Sprintf("memory differs: the snapshot's machine has %d MiB, this one %d MiB", id.MemoryMiB, own.MemoryMiB)
	case id.KernelSHA256 != own.KernelSHA256:
		return fmt.Sprintf("kernel differs (the snapshot's sha256 %.12s, this machine's %.12s)", id.KernelSHA256, own.KernelSHA256)
	case id.InitrdSHA256 != own.InitrdSHA256:
		return fmt.Sprintf("initrd differs (the snapshot's sha256 %.12s, this machine's %.12s)", id.InitrdSHA256, own.InitrdSHA256)
	case id.Cmdline != own.Cmdline:
		return fmt.Sprintf("kernel command line differs: the snapshot's %q, this machine's %q", id.Cmdline, own.Cmdline)
	case id.NIC != own.NIC || id.MAC != own.MAC:
		return fmt.Sprintf("NIC differs: the snapshot's %s, this machine's %s", nicText(id), nicText(own))
	case !slices.Equal(id.Disks, own.Disks):
		return fmt.Sprintf("disks differ: the snapshot's [%s], this machine's [%s]",
			strings.Join(id.Disks, " "), strings.Join(own.Disks, " "))
	}
	if d := cpuidMismatch(id.CPUID, own.CPUID); d != "" {
		return d + "; restore on a host with the same CPU model and kernel (KVM) version"
	}
	return ""
}

// Check returns an error naming the first difference, or nil.
func (id *Identity) Check(own *Identity) error {
	if d := id.Mismatch(own); d != "" {
		return fmt.Errorf("snapshot of another machine: %s", d)
	}
	return nil
}

func nicText(id *Identity) string {
	if !id.NIC {
		return "none"
	}
	return "MAC " + id.MAC
}

func leafOrder(a, b kvm.CPUIDEntry2) int {
	if c := cmp.Compare(a.Function, b.Function); c != 0 {
		return c
	}
	return cmp.Compare(a.Index, b.Index)
}

// cpuidMismatch names the first leaf (by function, then index) the two
// tables answer differently, or "".
func cpuidMismatch(snap, own []kvm.CPUIDEntry2) string {
	s, o := slices.Clone(snap), slices.Clone(own)
	slices.SortFunc(s, leafOrder)
	slices.SortFunc(o, leafOrder)
	i, j := 0, 0
	for i < len(s) || j < len(o) {
		var c int
		switch {
		case i == len(s):
			c = 1
		case j == len(o):
			c = -1
		default:
			c = leafOrder(s[i], o[j])
		}
		switch {
		case c < 0:
			return fmt.Sprintf("CPUID leaf %#x index %d: the snapshot's guest has it, this machine's does not", s[i].Function, s[i].Index)
		case c > 0:
			return fmt.Sprintf("CPUID leaf %#x index %d: this machine's guest has it, the snapshot's does not", o[j].Function, o[j].Index)
		}
		a, b := s[i], o[j]
		if a.Flags != b.Flags || a.EAX != b.EAX || a.EBX != b.EBX || a.ECX != b.ECX || a.EDX != b.EDX {
			return fmt.Sprintf("CPUID leaf %#x index %d differs (the snapshot's eax=%#x ebx=%#x ecx=%#x edx=%#x, this machine's eax=%#x ebx=%#x ecx=%#x edx=%#x)",
				a.Function, a.Index, a.EAX, a.EBX, a.ECX, a.EDX, b.EAX, b.EBX, b.ECX, b.EDX)
		}
		i, j = i+1, j+1
	}
	return ""
}
