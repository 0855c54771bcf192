//go:build linux && amd64

package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultPath is where the KVM device lives on every Linux host.
const DefaultPath = "/dev/kvm"

// Cap is a KVM capability number for CheckExtension (KVM_CAP_*).
type Cap uintptr

// Capabilities this project asks about.
const (
	CapIRQChip           Cap = 0
	CapHLT               Cap = 1
	CapUserMemory        Cap = 3
	CapSetTSSAddr        Cap = 4
	CapExtCPUID          Cap = 7
	CapNrVCPUs           Cap = 9
	CapNrMemslots        Cap = 10
	CapSyncMMU           Cap = 16
	CapSetGuestDebug     Cap = 23
	CapSetIdentityMapAdr Cap = 37
	CapAdjustClock       Cap = 39
	CapInternalErrorData Cap = 40
	CapVCPUEvents        Cap = 41
	CapDebugRegs         Cap = 50
	CapXSave             Cap = 55
	CapXCRs              Cap = 56
	CapMaxVCPUs          Cap = 66
	CapSyncRegs          Cap = 74
	CapReadonlyMem       Cap = 81
	CapImmediateExit     Cap = 136
)

// System is an open /dev/kvm.
type System struct {
	fd       int
	path     string
	mmapSize int
}

// Open opens the KVM device (DefaultPath if path is empty), checks the API
// version and that the features these bindings rely on are present.
func Open(path string) (*System, error) {
	if path == "" {
		path = DefaultPath
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w: is KVM available? (lsmod | grep kvm)", path, err)
	}
	s := &System{fd: fd, path: path}
	if err := s.init(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *System) init() error {
	v, err := ioctl(s.fd, kvmGetAPIVersion, 0)
	if err != nil {
		return fmt.Errorf("%s: KVM_GET_API_VERSION: %w", s.path, err)
	}
	if v != APIVersion {
		return fmt.Errorf("%s: KVM API version %d, want %d", s.path, v, APIVersion)
	}
	// Without immediate_exit a kick that lands just before KVM_RUN is lost
	// and the guest runs on until its next exit (Linux >= 4.11 has it).
	for _, c := range []struct {
		cap  Cap
		name string
	}{{CapUserMemory, "KVM_CAP_USER_MEMORY"}, {CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"}} {
		n, err := s.CheckExtension(c.cap)
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("%s: kernel lacks %s", s.path, c.name)
		}
	}
	n, err := ioctl(s.fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("%s: KVM_GET_VCPU_MMAP_SIZE: %w", s.path, err)
	}
	if n < runMinSize {
		return fmt.Errorf("%s: KVM_GET_VCPU_MMAP_SIZE %d is smaller than struct kvm_run (%d)", s.path, n, runMinSize)
	}
	s.mmapSize = n
	return nil
}

// Close closes the device. VMs created from it stay valid: they hold their
// own file descriptors.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		return fmt.Errorf("close %s: %w", s.path, err)
	}
	return nil
}

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 if unsupported,
// otherwise 1 or a capability-specific number (e.g. the slot count).
func (s *System) CheckExtension(c Cap) (int, error) {
	n, err := ioctl(s.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("%s: KVM_CHECK_EXTENSION %d: %w", s.path, c, err)
	}
	return n, nil
}

// VCPUMmapSize is the size of each vCPU's kvm_run mapping.
func (s *System) VCPUMmapSize() int { return s.mmapSize }

// SupportedCPUID returns the CPUID leaves KVM can present to a guest on this
// host (KVM_GET_SUPPORTED_CPUID): the ceiling for any CPUID policy.
func (s *System) SupportedCPUID() ([]CPUIDEntry2, error) {
	// The kernel reports E2BIG rather than the count it needs, so grow until
	// the table fits; current hosts have well under 100 entries.
	for n := 128; n <= 4096; n *= 2 {
		entries, err := s.getSupportedCPUID(n)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: KVM_GET_SUPPORTED_CPUID: %w", s.path, err)
		}
		return entries, nil
	}
	return nil, fmt.Errorf("%s: KVM_GET_SUPPORTED_CPUID: more than 4096 entries", s.path)
}

func (s *System) getSupportedCPUID(n int) ([]CPUIDEntry2, error) {
	buf := newCPUID2Buf(n)
	if _, err := ioctlPtr(s.fd, kvmGetSupportedCPUID, unsafe.Pointer(&buf[0])); err != nil {
		return nil, err
	}
	hdr, entries := splitCPUID2Buf(buf)
	out := make([]CPUIDEntry2, hdr.NEnt)
	copy(out, entries)
	return out, nil
}

// newCPUID2Buf allocates a struct kvm_cpuid2 with room for n entries. It is
// built from uint64 words so the header and entries are suitably aligned.
func newCPUID2Buf(n int) []uint64 {
	size := int(unsafe.Sizeof(cpuid2Header{})) + n*int(unsafe.Sizeof(CPUIDEntry2{}))
	buf := make([]uint64, (size+7)/8)
	(*cpuid2Header)(unsafe.Pointer(&buf[0])).NEnt = uint32(n)
	return buf
}

func splitCPUID2Buf(buf []uint64) (*cpuid2Header, []CPUIDEntry2) {
	hdr := (*cpuid2Header)(unsafe.Pointer(&buf[0]))
	first := (*CPUIDEntry2)(unsafe.Add(unsafe.Pointer(&buf[0]), unsafe.Sizeof(cpuid2Header{})))
	return hdr, unsafe.Slice(first, hdr.NEnt)
}
