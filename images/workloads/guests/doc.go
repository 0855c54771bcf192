// Package guests tests the distributed workloads as they run in guests:
// three Raft key/value replicas, and a MapReduce coordinator with two
// workers, each a plain VM (no replication) on one embedded switch,
// talking over TCP on the guest network. Its tests need a KVM host that
// runs Linux guests, and boot the nested one where this machine has none
// (testbench/kvmhost). It has no code of its own.
package guests
