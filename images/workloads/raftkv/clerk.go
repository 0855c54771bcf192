package raftkv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raft"
)

// Caller sends an encoded request to one server and returns its reply.
type Caller func(ctx context.Context, req []byte) ([]byte, error)

// Clerk is a client of the replicated service. It retries an op across
// servers until one that leads commits it, and remembers that leader.
// A Clerk has one op outstanding at a time (that is what makes its
// sequence numbers a dedup key); use one Clerk per concurrent client.
type Clerk struct {
	servers []Caller
	id      uint64
	seq     uint64
	leader  int
	// CallTimeout bounds one request to one server (default 2 s); a
	// request that outlasts it is retried. Servers whose commits take
	// longer (guests sharing an emulated CPU) need it longer, or every
	// attempt times out.
	CallTimeout time.Duration
	// Attempts counts requests sent, Retries the ones after the first
	// for an op (wrong leader, timeout, lost message).
	Attempts, Retries int
}

// NewClerk returns a clerk with a random client id.
func NewClerk(servers []Caller) *Clerk {
	id := rand.Uint64() | 1 // never 0, which marks "no op" to a waiting server
	return &Clerk{servers: servers, id: id, leader: rand.IntN(len(servers)), CallTimeout: 2 * time.Second}
}

// NewTCPClerk returns a clerk of the servers at addrs.
func NewTCPClerk(addrs []string) *Clerk {
	var cs []Caller
	for _, a := range addrs {
		cs = append(cs, raft.NewTCPClient(a).Call)
	}
	return NewClerk(cs)
}

// Get returns the value of key, "" if it has none.
func (ck *Clerk) Get(ctx context.Context, key string) (string, error) {
	return ck.do(ctx, Op{Kind: OpGet, Key: key})
}

// Put sets key to value.
func (ck *Clerk) Put(ctx context.Context, key, value string) error {
	_, err := ck.do(ctx, Op{Kind: OpPut, Key: key, Value: value})
	return err
}

// Append appends value to key's value.
func (ck *Clerk) Append(ctx context.Context, key, value string) error {
	_, err := ck.do(ctx, Op{Kind: OpAppend, Key: key, Value: value})
	return err
}

// do retries op until it succeeds or ctx ends. After an error the op may
// or may not have executed.
func (ck *Clerk) do(ctx context.Context, op Op) (string, error) {
	ck.seq++
	op.ClientID, op.Seq = ck.id, ck.seq
	req := op.encode()
	for try := 0; ; try++ {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("%v %q: %w", op.Kind, op.Key, err)
		}
		if try > 0 {
			ck.Retries++
		}
		ck.Attempts++
		rep, err := ck.call(ctx, ck.leader, req)
		if err == nil && rep.Status == StatusOK {
			return rep.Value, nil
		}
		ck.leader = (ck.leader + 1) % len(ck.servers)
		if (try+1)%len(ck.servers) == 0 {
			// A full round without a leader: an election is likely under
			// way; wait a little instead of spinning.
			select {
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
			}
		}
	}
}

func (ck *Clerk) call(ctx context.Context, server int, req []byte) (reply, error) {
	ctx, cancel := context.WithTimeout(ctx, ck.CallTimeout)
	defer cancel()
	b, err := ck.servers[server](ctx, req)
	if err != nil {
		return reply{}, err
	}
	return decodeReply(b)
}
