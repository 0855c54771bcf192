// Package arbiter owns the split-brain arbiter of a primary/backup pair: a
// record per pair holding a generation (the fencing token) and the name of
// the side that owns it, changed only by an atomic test-and-set.
//
// After a failure, each side that wants to act alone calls Claim with the
// generation it last saw: "I saw g; make it g+1 with me as owner". The claim
// succeeds only if the record still is at g, so among all claims made from
// one generation exactly one wins; every other gets a *LostClaimError (which
// matches ErrLostClaim) naming the record that beat it. A side whose arbiter
// does not answer gets an error matching ErrUnreachable and must wait and
// retry: it never acts on a guess. A retried claim by the same owner that
// had in fact won (its answer was lost) succeeds again, so owners must be
// unique per claimant (role, host and pid, say).
//
// Backends:
//
//	Dir   files on a storage directory, one per generation (local or NFS)
//	Etcd  one etcd key per pair, changed by a transaction on its version
//
// The storage server (package storage/server) holds an Arbiter, checks every
// write's generation against it and takes claims itself, so that a claim and
// the writes it fences are ordered in one place.
package arbiter
