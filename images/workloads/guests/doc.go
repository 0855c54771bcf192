// Package guests tests the distributed workloads as they run in guests:
// three Raft key/value replicas, and a MapReduce coordinator with two
// workers, on one embedded switch, talking over TCP on the guest network.
// The plain tests run every guest as a plain VM; the demos
// (TestRaftDemo, TestMapReduceDemo, `make demo-raft`, `make
// demo-mapreduce`) run one guest as an ftvm pair, kill its primary, then
// let the same guest die without ftvm, and log both side by side. Its
// tests need a KVM host that runs Linux guests, and boot the nested one
// where this machine has none (testbench/kvmhost). It has no code of its
// own.
package guests
