// Package failover owns failure detection, the go-live sequence, split-brain
// arbitration (through package storage) and re-protection by starting a new
// backup from the running primary.
//
// It knows nothing of KVM details.
package failover
