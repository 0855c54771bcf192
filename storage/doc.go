// Package storage owns shared disk backends, the arbiter (an atomic
// test-and-set carrying a generation number) and the fencing of stale writers.
// It is the only code that touches disk image files.
//
// A storage directory (Store, from Open) holds, for each disk NAME:
//
//	NAME.img   the raw image, sparse (made with ftruncate), exactly Size bytes
//	NAME.json  its Metadata: format version, size, creation time, the
//	           fencing generation, the 20-byte device ID, the filesystem
//	NAME.lock  an advisory flock, and who holds it (pid, host, since)
//
// The directory may live on a filesystem shared by the hosts of a
// primary/backup pair. Metadata is replaced atomically (temporary file,
// fsync, rename, fsync of the directory), and CreateDisk claims a name with
// O_EXCL, so concurrent creators and readers on other hosts never see a
// half-made disk.
//
// The lock keeps two VMMs from writing one disk: OpenDisk takes it
// exclusively, OpenDiskReadOnly shared. It is advisory and per host in
// practice (NFS maps flock to byte-range locks, which time out with a dead
// client's lease); across hosts the guarantee against a stale primary is
// the generation check of the storage server.
//
// Sub-packages:
//
//	arbiter  the pairs' records (generation, owner) and the atomic claim,
//	         on this directory (arbiter/PAIR/gen-N files) or on etcd
//	server   the fencing storage server: the one process that opens the
//	         disks, refuses writes of an older generation than the pair's
//	         record, and takes claims in order with those writes
package storage
