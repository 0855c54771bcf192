// Package testimage gives test packages the guest image: their TestMain
// builds it once outside the nested KVM host (where the Go toolchain and the
// kernel cache are) and ships it, and any extra host tools, into the host at
// the same paths. Tests find it with Dir.
package testimage

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// dirEnv names the image directory; kvmhost forwards FTVM_* variables into
// the nested host, so tests there see it too.
const dirEnv = "FTVM_TEST_IMAGE"

// Main is a TestMain for packages whose tests boot the guest image.
func Main(m *testing.M, opts ...kvmhost.Option) int {
	if kvmhost.IsAgent() || kvmhost.Inside() || os.Getenv(dirEnv) != "" {
		return kvmhost.TestMain(m, opts...)
	}
	dir, err := os.MkdirTemp("", "ftvm-test-image-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if _, err := images.Build(context.Background(), images.Options{OutDir: dir, Progress: os.Stderr}); err != nil {
		fmt.Fprintln(os.Stderr, "build the guest image for the tests:", err)
		return 1
	}
	os.Setenv(dirEnv, dir)
	return kvmhost.TestMain(m, append(opts, kvmhost.WithFiles(dir))...)
}

// Dir is the guest image directory built by Main.
func Dir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv(dirEnv)
	if dir == "" {
		tb.Fatal("no test image: the package's TestMain must call testimage.Main")
	}
	return dir
}
