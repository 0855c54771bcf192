// Package images owns the guest image: the kernel config and build from
// Debian's linux-source, the initramfs writer, the guest /init and the
// workloads it starts, and the image directory with its manifest.
//
// It knows nothing of the host side (KVM, replication).
package images
