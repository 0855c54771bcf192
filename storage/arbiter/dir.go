package arbiter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Dir keeps each pair's record as files in a directory, ROOT/PAIR/:
//
//	gen-00000000000000000001   the claim that made generation 1
//	gen-00000000000000000002   ... and 2: the record is the highest file
//
// Generation files are never changed or removed, so the set is always
// 1..N without gaps and a claim for any generation already taken fails.
//
// What makes a claim atomic: the claimant writes its whole record to a
// temporary file in the same directory, fsyncs it, and link(2)s it to the
// name of the next generation. link fails with EEXIST when the name
// exists, and the check and the creation are one step in the filesystem
// that owns the directory: the kernel's directory lock on a local
// filesystem, the server's on NFS (LINK is a single RPC the server carries
// out; NFSv2, v3 and v4 all have it, and servers commit it to stable
// storage before they answer). The loser's link fails; the winner's file
// appears complete, since its content was durable before it had the name.
// The one NFS trap, a LINK that succeeded but whose reply was lost and
// whose retransmission answers EEXIST, is caught as open(2) recommends:
// after EEXIST the claimant stats its temporary file, and a link count of
// 2 means its link is the one that made the name.
//
// Claims also require generation seen's file to exist, so nobody can
// create a generation past a gap.
//
// On NFS, mount hard (a soft mount can fail an RPC the server performed;
// that is reported as ErrUnreachable and the claim's retry settles it),
// with lookupcache=none and noac (or actimeo=0) on the directory's mount so
// that listings, lookups and link counts come from the server, not from
// the client's caches of a moment ago. Advisory locks are not used.
//
// A torn or damaged generation file (the CRC line does not match) reads as
// generation N claimed by an unreadable owner: the generation is taken all
// the same.
type Dir struct {
	root string
}

// DirName is the Dir backend's root inside a storage directory:
// STORAGE/arbiter, where the storage server keeps its records.
const DirName = "arbiter"

// OpenDir returns the Dir backend rooted at root, creating it if needed.
// For a pair sharing a storage directory, root is STORAGE/DirName.
func OpenDir(root string) (*Dir, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("arbiter: resolve %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("arbiter: create directory %s: %w", abs, err)
	}
	return &Dir{root: abs}, nil
}

// Root returns the directory holding the pairs' records.
func (d *Dir) Root() string { return d.root }

const genPrefix = "gen-"

func genName(g uint64) string { return fmt.Sprintf("%s%020d", genPrefix, g) }

// Claim implements Arbiter.
func (d *Dir) Claim(ctx context.Context, pair, owner string, seen uint64) (Record, error) {
	if err := validateClaim(pair, owner, seen); err != nil {
		return Record{}, err
	}
	if err := ctx.Err(); err != nil {
		return Record{}, fmt.Errorf("arbiter: claim of pair %q: %w", pair, err)
	}
	pdir := filepath.Join(d.root, pair)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return Record{}, d.unreachable(pair, "create the pair's directory", err)
	}
	if seen > 0 {
		if _, err := os.Lstat(filepath.Join(pdir, genName(seen))); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				return Record{}, d.unreachable(pair, "check generation "+strconv.FormatUint(seen, 10), err)
			}
			cur, err := d.Read(ctx, pair)
			if err != nil {
				return Record{}, err
			}
			return settle(cur, owner, seen)
		}
	}
	rec := Record{Pair: pair, Generation: seen + 1, Owner: owner, Claimed: time.Now().UTC()}
	tmp, err := writeClaimFile(pdir, rec)
	if err != nil {
		return Record{}, d.unreachable(pair, "write the claim", err)
	}
	defer os.Remove(tmp)

	target := filepath.Join(pdir, genName(seen+1))
	linkErr := os.Link(tmp, target)
	won := linkErr == nil
	if linkErr != nil {
		// Whatever link said, a link count of 2 means our file got the name.
		var st syscall.Stat_t
		if err := syscall.Stat(tmp, &st); err != nil {
			return Record{}, d.unreachable(pair, "check the claim's link count after "+linkErr.Error(), err)
		}
		won = st.Nlink == 2
		if !won && !errors.Is(linkErr, fs.ErrExist) {
			return Record{}, d.unreachable(pair, "link the claim", linkErr)
		}
	}
	if won {
		// Until the directory is synced, a crash of a local filesystem
		// could forget the name; the error makes the caller retry, and the
		// retry finds its own record.
		if err := syncDir(pdir); err != nil {
			return Record{}, d.unreachable(pair, "sync the claim", err)
		}
		return rec, nil
	}
	cur, err := d.Read(ctx, pair)
	if err != nil {
		return Record{}, err
	}
	if cur.Generation <= seen {
		// The listing did not show the file link just found (a client
		// cache that outlived lookupcache advice): read it by name.
		if cur, err = d.readGen(pair, seen+1); err != nil {
			return Record{}, err
		}
	}
	return settle(cur, owner, seen)
}

// writeClaimFile writes rec to a new temporary file in dir, durably, and
// returns its path. The leading dot keeps it out of Read's listing.
func writeClaimFile(dir string, rec Record) (string, error) {
	data, err := encodeRecord(rec)
	if err != nil {
		return "", err
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf(".claim-%d-%s", rec.Generation, hex.EncodeToString(nonce[:])))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return "", err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		os.Remove(path)
		return "", werr
	}
	return path, nil
}

// Read implements Arbiter: the highest generation file, decoded.
func (d *Dir) Read(ctx context.Context, pair string) (Record, error) {
	if err := ValidatePair(pair); err != nil {
		return Record{}, err
	}
	if err := ctx.Err(); err != nil {
		return Record{}, fmt.Errorf("arbiter: read pair %q: %w", pair, err)
	}
	pdir := filepath.Join(d.root, pair)
	entries, err := os.ReadDir(pdir)
	if errors.Is(err, fs.ErrNotExist) {
		return Record{Pair: pair}, nil
	}
	if err != nil {
		return Record{}, d.unreachable(pair, "list the records", err)
	}
	var top uint64
	for _, e := range entries {
		digits, ok := strings.CutPrefix(e.Name(), genPrefix)
		if !ok || len(digits) != 20 {
			continue
		}
		if g, err := strconv.ParseUint(digits, 10, 64); err == nil && g > top {
			top = g
		}
	}
	if top == 0 {
		return Record{Pair: pair}, nil
	}
	return d.readGen(pair, top)
}

// readGen reads generation g's file, which exists.
func (d *Dir) readGen(pair string, g uint64) (Record, error) {
	f, err := os.Open(filepath.Join(d.root, pair, genName(g)))
	if err != nil {
		return Record{}, d.unreachable(pair, "open generation "+strconv.FormatUint(g, 10), err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRecordBytes+1))
	if err != nil {
		return Record{}, d.unreachable(pair, "read generation "+strconv.FormatUint(g, 10), err)
	}
	rec, err := decodeRecord(data, pair, g)
	if err != nil {
		return Record{Pair: pair, Generation: g, Damaged: err.Error()}, nil
	}
	return rec, nil
}

func (d *Dir) unreachable(pair, doing string, err error) error {
	return fmt.Errorf("arbiter: pair %q in %s: %s: %w: %w", pair, d.root, doing, ErrUnreachable, err)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
