package vm_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// imageEnv names the guest image directory the Linux tests boot. TestMain
// builds it outside the nested host (where the toolchain and the kernel
// cache are) and ships it in at the same path.
const imageEnv = "FTVM_TEST_IMAGE"

func TestMain(m *testing.M) {
	if kvmhost.IsAgent() || kvmhost.Inside() || os.Getenv(imageEnv) != "" {
		os.Exit(kvmhost.TestMain(m))
	}
	dir, err := os.MkdirTemp("", "ftvm-vm-test-image-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := images.Build(context.Background(), images.Options{OutDir: dir, Progress: os.Stderr}); err != nil {
		fmt.Fprintln(os.Stderr, "build the guest image for the Linux tests:", err)
		os.Exit(1)
	}
	os.Setenv(imageEnv, dir)
	code := kvmhost.TestMain(m, kvmhost.WithFiles(dir))
	os.RemoveAll(dir)
	os.Exit(code)
}
