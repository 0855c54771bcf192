// Package hypervisor owns everything that touches KVM for one VM: the KVM
// bindings (subpackage kvm), guest memory, the vCPU run loop, Linux boot,
// the CPUID policy, the device bus and the device models, and snapshot/restore
// of vCPU and device state.
//
// It knows nothing of replication, the network switch or storage backends:
// devices obtain every non-deterministic input through interfaces that the
// replay layer implements.
package hypervisor
