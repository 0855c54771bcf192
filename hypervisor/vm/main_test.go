package vm_test

import (
	"os"
	"testing"

	"github.com/ftvm/ftvm/testbench/testimage"
)

func TestMain(m *testing.M) { os.Exit(testimage.Main(m)) }
