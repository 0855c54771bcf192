// Package boot owns getting a Linux kernel into guest memory and the vCPU
// into a state where the kernel can start: the guest physical memory map,
// the GDT, identity page tables, the zero page (boot_params with its e820
// table), the command line, initrd placement, the PVH start info for an ELF
// vmlinux, and the register state for either entry (PVH 32-bit protected
// mode, or the 64-bit boot protocol for a bzImage).
//
// It writes only into the byte slice it is given and reads no devices; the
// ACPI tables are built by hypervisor/acpi and only their RSDP address is
// passed in. Everything here is a pure function of its inputs, so a primary
// and a backup that load the same images start from identical state.
//
// Kernel images are untrusted input: every offset and size read from them
// is checked before use, and the parsers are fuzzed.
package boot
