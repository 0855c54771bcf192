package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/storage/arbiter"
)

// flakyArbiter is unreachable for the first `down` claims, then answers
// with win or a lost claim.
type flakyArbiter struct {
	mu     sync.Mutex
	down   int
	claims int
	win    bool
}

func (f *flakyArbiter) Claim(ctx context.Context, pair, owner string, seen uint64) (arbiter.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claims++
	if f.claims <= f.down {
		return arbiter.Record{}, fmt.Errorf("%w: storage not mounted", arbiter.ErrUnreachable)
	}
	if !f.win {
		return arbiter.Record{}, &arbiter.LostClaimError{Seen: seen, Current: arbiter.Record{Pair: pair, Generation: seen + 1, Owner: "the other side"}}
	}
	return arbiter.Record{Pair: pair, Generation: seen + 1, Owner: owner}, nil
}

func (f *flakyArbiter) Read(context.Context, string) (arbiter.Record, error) {
	return arbiter.Record{}, nil
}

// TestClaimWaitsForAnUnreachableArbiter: a side that cannot reach the
// arbiter never acts alone on a guess: it asks again, says why it waits,
// and acts only on an answer.
func TestClaimWaitsForAnUnreachableArbiter(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, win := range []bool{true, false} {
		arb := &flakyArbiter{down: 3, win: win}
		var states []string
		rec, err := claimUntilAnswered(context.Background(), arb, "kv", "backup", 4, quiet, func(s string) { states = append(states, s) })
		if arb.claims != 4 {
			t.Fatalf("win=%v: %d claims, want 3 unanswered then 1 answered", win, arb.claims)
		}
		if len(states) != 3 || !strings.Contains(states[0], "cannot reach the arbiter") || !strings.Contains(states[0], "storage not mounted") {
			t.Fatalf("win=%v: states while waiting %q", win, states)
		}
		var lost *LostArbitrationError
		switch {
		case win && (err != nil || rec.Generation != 5):
			t.Fatalf("win: %v %v", rec, err)
		case !win && !errors.As(err, &lost):
			t.Fatalf("loss: %v, want a LostArbitrationError", err)
		}
	}
	// Stopped while waiting: an error, never a win.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := claimUntilAnswered(ctx, &flakyArbiter{down: 1 << 30, win: true}, "kv", "backup", 0, quiet, func(string) {}); err == nil {
		t.Fatal("a claim that never got an answer succeeded")
	}
}
