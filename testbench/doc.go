// Package testbench owns what tests need beyond a unit: the KVM host harness
// (subpackage kvmhost), fault injection, workload clients, linearizability
// checks and benchmark reports.
package testbench
