package arbiter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd keeps each pair's record in one etcd key, PREFIX/PAIR, for pairs
// whose hosts share no filesystem but reach an etcd cluster.
//
// The generation is the key's version (etcd counts a key's puts since its
// creation: 0 when absent), so "the record is still at seen" is the compare
// Version(key) == seen, and a claim is one transaction: if that holds, put
// the new record, else get the current one. etcd's transactions are
// serialized by raft, so of all claims from one generation exactly one
// compare holds; the loser learns the winner from the same transaction.
// The value repeats the generation, and a value that disagrees with the
// version (the key edited by hand) reads as damaged. Deleting the key
// would reset the version to 0: never do that while a pair runs.
//
// An etcd that does not answer within RequestTimeout gives ErrUnreachable;
// a transaction that timed out may still have been applied, which is why a
// retried claim by the same owner that finds its own record succeeds.
type Etcd struct {
	cli       *clientv3.Client
	prefix    string
	timeout   time.Duration
	endpoints string
}

// EtcdConfig configures NewEtcd.
type EtcdConfig struct {
	Endpoints []string
	// Prefix is put before the pair name to make the key; empty means
	// DefaultEtcdPrefix.
	Prefix string
	// RequestTimeout bounds one claim or read; 0 means 2 s.
	RequestTimeout time.Duration
}

// DefaultEtcdPrefix is where records live unless EtcdConfig.Prefix says.
const DefaultEtcdPrefix = "/ftvm/arbiter/"

// NewEtcd connects to etcd. It does not wait for the cluster: an
// unreachable cluster shows up as ErrUnreachable from Claim and Read.
func NewEtcd(cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("arbiter: etcd: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultEtcdPrefix
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 2 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.RequestTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("arbiter: etcd %v: %w", cfg.Endpoints, err)
	}
	return &Etcd{cli: cli, prefix: cfg.Prefix, timeout: cfg.RequestTimeout, endpoints: strings.Join(cfg.Endpoints, ",")}, nil
}

// Close releases the client's connections.
func (e *Etcd) Close() error { return e.cli.Close() }

// Claim implements Arbiter.
func (e *Etcd) Claim(ctx context.Context, pair, owner string, seen uint64) (Record, error) {
	if err := validateClaim(pair, owner, seen); err != nil {
		return Record{}, err
	}
	rec := Record{Pair: pair, Generation: seen + 1, Owner: owner, Claimed: time.Now().UTC()}
	val, err := encodeRecord(rec)
	if err != nil {
		return Record{}, err
	}
	key := e.prefix + pair
	tctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	resp, err := e.cli.Txn(tctx).
		If(clientv3.Compare(clientv3.Version(key), "=", int64(seen))).
		Then(clientv3.OpPut(key, string(val))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return Record{}, e.failed(ctx, pair, "claim from generation "+fmt.Sprint(seen)+" (outcome unknown: retry with the same owner)", err)
	}
	if resp.Succeeded {
		return rec, nil
	}
	var cur Record
	if rs := resp.Responses; len(rs) == 1 && rs[0].GetResponseRange() != nil {
		cur = e.decode(pair, rs[0].GetResponseRange().Kvs)
	} else {
		return Record{}, fmt.Errorf("arbiter: etcd %s: claim of pair %q: %w: malformed transaction response", e.endpoints, pair, ErrUnreachable)
	}
	return settle(cur, owner, seen)
}

// Read implements Arbiter with a linearizable get.
func (e *Etcd) Read(ctx context.Context, pair string) (Record, error) {
	if err := ValidatePair(pair); err != nil {
		return Record{}, err
	}
	tctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	resp, err := e.cli.Get(tctx, e.prefix+pair)
	if err != nil {
		return Record{}, e.failed(ctx, pair, "read", err)
	}
	return e.decode(pair, resp.Kvs), nil
}

// decode turns the key's (at most one) key-value into a record: absent is
// generation 0; unreadable content keeps the version as the generation.
func (e *Etcd) decode(pair string, kvs []*mvccpb.KeyValue) Record {
	if len(kvs) == 0 || kvs[0].Version <= 0 {
		return Record{Pair: pair}
	}
	g := uint64(kvs[0].Version)
	rec, err := decodeRecord(kvs[0].Value, pair, g)
	if err != nil {
		return Record{Pair: pair, Generation: g, Damaged: err.Error()}
	}
	return rec
}

// failed reports an etcd call that gave no answer: the caller's own
// cancellation as such, anything else (the caller's deadline included:
// etcd did not answer in the time it had) as ErrUnreachable.
func (e *Etcd) failed(ctx context.Context, pair, doing string, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("arbiter: etcd %s: pair %q: %s: %w", e.endpoints, pair, doing, ctx.Err())
	}
	return fmt.Errorf("arbiter: etcd %s: pair %q: %s: %w (no answer in time): %w", e.endpoints, pair, doing, ErrUnreachable, err)
}
