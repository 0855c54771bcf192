//go:build linux && amd64

package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// APIVersion is the only KVM_GET_API_VERSION value the kernel has returned
// since Linux 2.6.22; anything else means an ABI these bindings don't speak.
const APIVersion = 12

// The ioctl request encoding of asm-generic/ioctl.h, which x86 uses:
// dir<<30 | size<<16 | type<<8 | nr.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	iocNRShift   = 0
	iocTypeShift = 8
	iocSizeShift = 16
	iocDirShift  = 30

	kvmio = 0xAE
)

// The request numbers are written as constant expressions of the macro so
// that a struct whose layout drifts also changes its request number, which
// the tests compare against the values the kernel headers produce.
const (
	kvmGetAPIVersion       = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x00
	kvmCreateVM            = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x01
	kvmGetMSRIndexList     = (iocRead|iocWrite)<<iocDirShift | uintptr(unsafe.Sizeof(msrListHeader{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x02
	kvmCheckExtension      = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x03
	kvmGetVCPUMmapSize     = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x04
	kvmGetSupportedCPUID   = (iocRead|iocWrite)<<iocDirShift | uintptr(unsafe.Sizeof(cpuid2Header{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x05
	kvmCreateVCPU          = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x41
	kvmGetDirtyLog         = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(dirtyLog{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x42
	kvmSetUserMemoryRegion = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(userspaceMemoryRegion{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x46
	kvmSetTSSAddr          = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x47
	kvmSetIdentityMapAddr  = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(uint64(0)))<<iocSizeShift | kvmio<<iocTypeShift | 0x48
	kvmRun                 = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x80
	kvmGetRegs             = iocRead<<iocDirShift | uintptr(unsafe.Sizeof(Regs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x81
	kvmSetRegs             = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(Regs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x82
	kvmGetSregs            = iocRead<<iocDirShift | uintptr(unsafe.Sizeof(Sregs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x83
	kvmSetSregs            = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(Sregs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x84
	kvmInterrupt           = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(interrupt{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x86
	kvmGetMSRs             = (iocRead|iocWrite)<<iocDirShift | uintptr(unsafe.Sizeof(msrsHeader{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x88
	kvmSetMSRs             = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(msrsHeader{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x89
	kvmGetFPU              = iocRead<<iocDirShift | uintptr(unsafe.Sizeof(FPU{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x8c
	kvmSetFPU              = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(FPU{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x8d
	kvmSetCPUID2           = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(cpuid2Header{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x90
	kvmGetCPUID2           = (iocRead|iocWrite)<<iocDirShift | uintptr(unsafe.Sizeof(cpuid2Header{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x91
	kvmSetGuestDebug       = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(guestDebug{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x9b
	kvmGetVCPUEvents       = iocRead<<iocDirShift | uintptr(unsafe.Sizeof(VCPUEvents{}))<<iocSizeShift | kvmio<<iocTypeShift | 0x9f
	kvmSetVCPUEvents       = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(VCPUEvents{}))<<iocSizeShift | kvmio<<iocTypeShift | 0xa0
	kvmGetDebugRegs        = iocRead<<iocDirShift | uintptr(unsafe.Sizeof(DebugRegs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0xa1
	kvmSetDebugRegs        = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(DebugRegs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0xa2
	kvmGetXSave            = iocRead<<iocDirShift | uintptr(unsafe.Sizeof(XSave{}))<<iocSizeShift | kvmio<<iocTypeShift | 0xa4
	kvmSetXSave            = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(XSave{}))<<iocSizeShift | kvmio<<iocTypeShift | 0xa5
	kvmGetXCRs             = iocRead<<iocDirShift | uintptr(unsafe.Sizeof(XCRs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0xa6
	kvmSetXCRs             = iocWrite<<iocDirShift | uintptr(unsafe.Sizeof(XCRs{}))<<iocSizeShift | kvmio<<iocTypeShift | 0xa7
)

// ioctl issues a request whose argument is a plain integer, again if a
// signal interrupted it: KVM_CREATE_VM and friends can return EINTR when
// any signal arrives (seen with a test's signal storm), and nothing but
// KVM_RUN has a reason to stop for one.
func ioctl(fd int, req uintptr, arg uintptr) (int, error) {
	for {
		r, err := runIoctl(fd, req, arg)
		if err != unix.EINTR {
			return r, err
		}
	}
}

// runIoctl issues a request once and returns EINTR as is: KVM_RUN's way,
// so a kick always stops it (never put it in a retry loop).
//
// It uses unix.Syscall rather than RawSyscall so a long KVM_RUN releases its P
// to the scheduler.
func runIoctl(fd int, req uintptr, arg uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return int(r), errno
	}
	return int(r), nil
}

// ioctlPtr issues a request whose argument points at memory the kernel reads
// or writes, again if a signal interrupted it. The pointer-to-uintptr
// conversion sits in the Syscall call expression itself so the compiler
// keeps the object alive and in place for the duration of the call.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (int, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		switch errno {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return int(r), errno
	}
}
