// Package storage owns shared disk backends, the arbiter (an atomic
// test-and-set carrying a generation number) and the fencing of stale writers.
// It is the only code that touches disk image files.
package storage
