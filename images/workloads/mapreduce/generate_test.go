package mapreduce

import (
	"reflect"
	"testing"
)

// TestGenerateSplitsIsDeterministic: a guest and the host that checks its
// job must get the same inputs from the same seed.
func TestGenerateSplitsIsDeterministic(t *testing.T) {
	a, b := GenerateSplits(4, 7), GenerateSplits(4, 7)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed, different splits")
	}
	if reflect.DeepEqual(a, GenerateSplits(4, 8)) {
		t.Fatal("different seeds, same splits")
	}
	if len(a) != 4 || a[3].Name != "input-3.txt" || len(a[0].Data) < 300*3 {
		t.Fatalf("splits: %d, %q, %d bytes", len(a), a[3].Name, len(a[0].Data))
	}
}
