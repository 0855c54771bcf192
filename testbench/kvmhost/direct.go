package kvmhost

import (
	"fmt"
	"os"
	"time"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// Environment override for where KVM tests run: "nested" forces a nested
// host, "direct" forces this machine's /dev/kvm.
const whereEnv = "FTVM_KVMHOST"

// The probe times two guest loops and takes the difference, which removes
// the fixed cost of creating and first entering a VM (about 50 ms in a
// nested host, more than 10,000 iterations of the loop there). On an
// emulating KVM (about 1 µs per guest ring-0 instruction, two per iteration)
// the long loop costs about 1 s, once per process.
const (
	shortProbe = 10_000
	longProbe  = 500_000
	// atSpeed bounds the per-iteration time of "at speed": hardware takes
	// about 1 ns, a nested host about 7 ns, an emulating KVM about 2000 ns.
	atSpeed = 200 * time.Nanosecond
)

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
	short, err := kvm.MeasureRing0Loop(shortProbe)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm cannot run the ring-0 probe guest (%v)", err)
	}
	long, err := kvm.MeasureRing0Loop(longProbe)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm cannot run the ring-0 probe guest (%v)", err)
	}
	per := max(long-short, 0) / (longProbe - shortProbe)
	if per > atSpeed {
		return false, fmt.Sprintf("/dev/kvm emulates ring 0 (%v per probe loop iteration, hardware takes ~1ns)", per)
	}
	return true, fmt.Sprintf("/dev/kvm runs ring 0 at speed (%v per probe loop iteration)", per)
}
