package kvmhost

import "os"

// Internals for the external tests in package kvmhost_test.

func HostDir(h *Host) string          { return h.dir }
func HostProcess(h *Host) *os.Process { return h.qemu.Process }

const (
	RoleEnv    = roleEnv
	RoleInside = roleInside
)
