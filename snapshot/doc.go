// Package snapshot owns the on-disk (and on-wire) format of a whole
// machine at one exit: what machine it is, where it is, its vCPU, its
// device models and its guest memory. It is the base of state transfer:
// a backup made from a running primary, a fast start from a boot
// snapshot, a resync. A delta holds only the pages written since a base
// snapshot, which it names by hash.
//
// Format, version 1; integers little endian:
//
//	magic    "FTVMSNAP" (8), version (2) = 1, kind (1): 1 full, 2 delta;
//	         reserved (1) = 0
//	records  each: tag (1), payload length (4), payload; in this order:
//	  base      (delta only) the base snapshot's Sum (32)
//	  identity  the machine (Identity): memory size, kernel and initrd
//	            hashes, command line, NIC and MAC, disks, CPUID table
//	  machine   exit number (8), guest time in ns (8), the vCPU
//	            (hypervisor/vm's CPU state encoding, length-prefixed),
//	            every device model's state (see machine.go)
//	  pages     first page (4), then whole 4 KiB pages; at most
//	            MaxRunPages a record
//	  zeros     (delta only) first page (4), count (4): pages that are
//	            zero now
//	  end       Sum (32): SHA-256 of every byte before this payload
//
// Page and zero records name pages in strictly ascending order, each page
// at most once, all inside the identity's memory. A full snapshot leaves
// out every zero page: a page it does not name is zero. A delta names the
// pages written since its base, zero ones as zero runs; a page it does not
// name is as in the base.
//
// The Sum is the snapshot's name. Decoding checks it at the end record:
// memory loaded from a stream whose end does not verify must be thrown
// away (Reader.LoadMemory says so with its error). The decoder takes
// untrusted bytes: every length is bounded before anything is allocated
// (a record's payload by a bound for its tag), the largest buffer it holds
// is one pages record, and nothing in the input can make it panic.
package snapshot
