// Package delegation is a test package that the kvmhost tests build and
// run, to check that outcomes inside the nested host reach the outside.
package delegation

import (
	"os"
	"testing"

	"github.com/ftvm/ftvm/testbench/kvmhost"
)

func TestMain(m *testing.M) { os.Exit(kvmhost.TestMain(m)) }

func TestPassesInside(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Fatal(err)
	}
	t.Log("marker: inside with /dev/kvm")
}

func TestFailsInside(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	t.Fatal("marker: failing on purpose inside")
}

func TestSkipsInside(t *testing.T) {
	if kvmhost.RanElsewhere(t) {
		return
	}
	t.Skip("marker: skipping on purpose inside")
}

func TestSubtests(t *testing.T) {
	t.Run("a/b c", func(t *testing.T) {
		if kvmhost.RanElsewhere(t) {
			return
		}
		t.Log("marker: subtest ran inside")
	})
}
