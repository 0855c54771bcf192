package kvmhost

import (
	"os"
)

// Environment override for where KVM tests run: "nested" forces a nested
// host, "direct" forces this machine's /dev/kvm.
const whereEnv = "FTVM_KVMHOST"

// DirectKVM reports whether this machine's /dev/kvm runs guest ring-0 code
// at speed, and why it decided so. Without hardware virtualization KVM may
// still work but emulate ring 0 about 1000x slower, and some instructions not
// at all, so a short guest loop is timed to tell the two apart.
func DirectKVM() (bool, string) {
	switch os.Getenv(whereEnv) {
	case "nested":
		return false, whereEnv + "=nested"
	case "direct":
		return true, whereEnv + "=direct"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, "no usable /dev/kvm here (" + err.Error() + ")"
	}
	f.Close()
	return false, "ring-0 probe not implemented yet"
}
