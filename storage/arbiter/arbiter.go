package arbiter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ftvm/ftvm/storage"
)

// Arbiter is the atomic test-and-set a side of a pair performs before it
// acts alone. Implementations are safe for concurrent use by many
// processes and hosts.
type Arbiter interface {
	// Claim makes the pair's record generation seen+1 owned by owner, if
	// the record is still at generation seen. It returns the new record;
	// a *LostClaimError if the record had moved on; an error matching
	// ErrUnreachable if the backend could not be asked (the outcome is
	// then unknown: retry with the same owner); ErrAhead if the record
	// has not reached seen.
	Claim(ctx context.Context, pair, owner string, seen uint64) (Record, error)
	// Read returns the pair's current record: generation 0 and no owner
	// if nobody ever claimed it.
	Read(ctx context.Context, pair string) (Record, error)
}

// Record is a pair's arbiter record.
type Record struct {
	Pair string
	// Generation is the fencing token: 0 until the first claim, one more
	// with every successful claim, never smaller.
	Generation uint64
	// Owner is who made the claim that set Generation ("" at 0).
	Owner string
	// Claimed is when the owner made it, by its own clock.
	Claimed time.Time
	// Damaged, if not empty, says why the record's content could not be
	// read. The generation is still known (it is claimed), the owner not.
	Damaged string
}

func (r Record) String() string {
	switch {
	case r.Generation == 0:
		return fmt.Sprintf("pair %q: generation 0 (never claimed)", r.Pair)
	case r.Damaged != "":
		return fmt.Sprintf("pair %q: generation %d, owner unreadable (%s)", r.Pair, r.Generation, r.Damaged)
	}
	return fmt.Sprintf("pair %q: generation %d owned by %q", r.Pair, r.Generation, r.Owner)
}

// Errors Claim and Read wrap; test with errors.Is.
var (
	// ErrLostClaim: another claim for the same generation won first.
	ErrLostClaim = errors.New("lost the claim")
	// ErrUnreachable: the backend did not answer; nothing is known.
	ErrUnreachable = errors.New("arbiter unreachable")
	// ErrAhead: the claimant says it saw a generation the record never
	// reached (a caller bug, or a record reset by hand).
	ErrAhead = errors.New("claimed from a generation the record has not reached")
	// ErrInvalid: a malformed pair or owner name.
	ErrInvalid = errors.New("invalid claim")
)

// LostClaimError is the loser's answer: the claim from Seen failed because
// the record is now Current.
type LostClaimError struct {
	Seen    uint64
	Current Record
}

func (e *LostClaimError) Error() string {
	return fmt.Sprintf("arbiter: claim from generation %d %v: %v", e.Seen, ErrLostClaim, e.Current)
}

// Is makes errors.Is(err, ErrLostClaim) true.
func (e *LostClaimError) Is(target error) bool { return target == ErrLostClaim }

// MaxOwnerLen bounds an owner's name, so it fits every backend's record
// and the storage server's wire format.
const MaxOwnerLen = 200

// ValidateOwner checks an owner name: 1 to MaxOwnerLen bytes of printable
// ASCII (spaces allowed), so it reads well in every error message.
func ValidateOwner(owner string) error {
	if owner == "" || len(owner) > MaxOwnerLen {
		return fmt.Errorf("%w: owner %q must be 1 to %d bytes", ErrInvalid, owner, MaxOwnerLen)
	}
	for i := 0; i < len(owner); i++ {
		if c := owner[i]; c < ' ' || c > '~' {
			return fmt.Errorf("%w: owner %q has a byte 0x%02x outside printable ASCII", ErrInvalid, owner, c)
		}
	}
	return nil
}

// validateClaim checks a claim's arguments the same way for every backend.
func validateClaim(pair, owner string, seen uint64) error {
	if err := ValidatePair(pair); err != nil {
		return err
	}
	if err := ValidateOwner(owner); err != nil {
		return err
	}
	if seen >= maxGeneration {
		return fmt.Errorf("%w: generation %d is at the limit", ErrInvalid, seen)
	}
	return nil
}

// ValidatePair checks a pair name: the rules of a disk name (letters,
// digits, '.', '_', '-'), since it names files and keys.
func ValidatePair(pair string) error {
	if err := storage.ValidateName(pair); err != nil {
		// ValidateName speaks of disks; a pair's name follows the same rule.
		msg := strings.TrimPrefix(err.Error(), storage.ErrInvalidName.Error()+": ")
		return fmt.Errorf("%w: pair name %s", ErrInvalid, msg)
	}
	return nil
}

// maxGeneration keeps generations inside an int64 (etcd versions) and a
// 20-digit file name.
const maxGeneration = 1<<63 - 1

// settle turns a lost claim into a win when the record it lost to is the
// claimant's own (a retry of a claim whose answer was lost), and a record
// behind seen into ErrAhead.
func settle(current Record, owner string, seen uint64) (Record, error) {
	switch {
	case current.Generation == seen+1 && current.Owner == owner && current.Damaged == "":
		return current, nil
	case current.Generation < seen:
		return current, fmt.Errorf("arbiter: claim of pair %q from generation %d: %w (record is at %d)", current.Pair, seen, ErrAhead, current.Generation)
	}
	return current, &LostClaimError{Seen: seen, Current: current}
}
