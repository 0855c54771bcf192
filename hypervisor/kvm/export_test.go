//go:build linux && amd64

package kvm

// Hooks for the external tests in package kvm_test, which cannot see
// unexported names and must not need /dev/kvm for these checks.

// DecodeExit decodes the exit recorded in a kvm_run image.
func DecodeExit(run []byte) Exit { return decodeExit(run) }

// NewVCPUOnRunPage returns a VCPU with no kernel object behind it whose
// kvm_run is run, for exercising the run-page accessors and the Kicker.
func NewVCPUOnRunPage(run []byte) *VCPU { return newVCPU(-1, 0, run) }
