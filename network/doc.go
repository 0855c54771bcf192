// Package network owns the virtual network a VM's frames travel on: the
// embedded gvisor-tap-vsock switch (Switch, run by "ftctl net serve" in a
// long-lived process so that it outlives any VMM), the frame-port protocol
// VMMs use to attach to it (a 4-byte big-endian length before every Ethernet
// frame, the switch's QEMU stream protocol), port forwards that expose guest
// services on host addresses, and the tap backend for real hosts.
//
// Everything here is host side and may use goroutines. The VMM sees a Port:
// Send never blocks the vCPU loop for long (frames are queued with a bound and
// counted when dropped), and received frames are handed to a callback the VMM
// supplies; the VMM queues them and gives them to the guest only at VM exits,
// which is what keeps record/replay deterministic.
package network
