// Package kvmhost runs commands and tests on a KVM host that executes guest
// ring-0 code at speed. Where this machine's /dev/kvm is hardware-backed the
// host is this machine; otherwise it is a nested host: QEMU's software CPU
// with nested SVM and NPT, booting Debian's prebuilt cloud kernel with the
// KVM modules loaded, controlled through an agent on a second serial line.
//
// Tests use it like this, so that the same test code runs directly on real
// hardware and inside the nested host elsewhere:
//
//	func TestMain(m *testing.M) { os.Exit(kvmhost.TestMain(m)) }
//
//	func TestGuestLoop(t *testing.T) {
//		if kvmhost.RanElsewhere(t) {
//			return
//		}
//		// ... opens /dev/kvm and runs a guest ...
//	}
package kvmhost
