package arbiter_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/storage/arbiter"
	"github.com/ftvm/ftvm/storage/arbiter/arbitertest"
)

// The environment from which a helper process of the race opens the same
// backend as the test that started it.
const (
	helperDirEnv  = "FTVM_ARBITER_TEST_DIR"
	helperEtcdEnv = "FTVM_ARBITER_TEST_ETCD"
)

func TestMain(m *testing.M) {
	arbitertest.HelperMain(func() (arbiter.Arbiter, error) {
		if dir := os.Getenv(helperDirEnv); dir != "" {
			return arbiter.OpenDir(dir)
		}
		return arbiter.NewEtcd(arbiter.EtcdConfig{Endpoints: []string{os.Getenv(helperEtcdEnv)}, RequestTimeout: 10 * time.Second})
	})
	os.Exit(m.Run())
}

// backend is an arbiter.Arbiter under test and the environment a helper process
// needs to open the same one.
type backend struct {
	arb arbiter.Arbiter
	env []string
}

func dirBackend(t *testing.T) backend {
	root := filepath.Join(t.TempDir(), "arbiter")
	d, err := arbiter.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	return backend{arb: d, env: []string{helperDirEnv + "=" + root}}
}

func etcdBackend(t *testing.T) backend {
	endpoint, _ := arbitertest.StartEtcd(t)
	e, err := arbiter.NewEtcd(arbiter.EtcdConfig{Endpoints: []string{endpoint}, RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return backend{arb: e, env: []string{helperEtcdEnv + "=" + endpoint}}
}

var backends = map[string]func(*testing.T) backend{"dir": dirBackend, "etcd": etcdBackend}

func TestClaimRace(t *testing.T) {
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			arbitertest.Race(t, b.arb, arbitertest.Config{
				Pair: "kv", Goroutines: 8, Processes: 4, Rounds: 40, HelperEnv: b.env,
			})
		})
	}
}

// TestClaimSemantics walks one pair's record through every answer Claim
// gives, on each backend.
func TestClaimSemantics(t *testing.T) {
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			arb := open(t).arb
			ctx := context.Background()
			if r, err := arb.Read(ctx, "p"); err != nil || r.Generation != 0 || r.Owner != "" {
				t.Fatalf("fresh record: %v, %v", r, err)
			}
			r1, err := arb.Claim(ctx, "p", "backup@a", 0)
			if err != nil || r1.Generation != 1 || r1.Owner != "backup@a" || r1.Pair != "p" {
				t.Fatalf("first claim: %v, %v", r1, err)
			}
			// The same claim again (an answer lost, a retry) is the owner's.
			if r, err := arb.Claim(ctx, "p", "backup@a", 0); err != nil || r.Generation != 1 {
				t.Fatalf("retried claim: %v, %v", r, err)
			}
			_, err = arb.Claim(ctx, "p", "primary@b", 0)
			var lost *arbiter.LostClaimError
			if !errors.As(err, &lost) || !errors.Is(err, arbiter.ErrLostClaim) || lost.Current.Generation != 1 || lost.Current.Owner != "backup@a" || lost.Seen != 0 {
				t.Fatalf("stale claim: %v", err)
			}
			if !strings.Contains(err.Error(), `generation 1 owned by "backup@a"`) {
				t.Errorf("loser's message does not name the winner: %v", err)
			}
			if _, err := arb.Claim(ctx, "p", "primary@b", 5); !errors.Is(err, arbiter.ErrAhead) {
				t.Fatalf("claim from a generation never reached: %v", err)
			}
			r2, err := arb.Claim(ctx, "p", "primary@b", 1)
			if err != nil || r2.Generation != 2 || r2.Owner != "primary@b" {
				t.Fatalf("claim from 1: %v, %v", r2, err)
			}
			// An old winner's retry from 0 is a loss now: its record is gone by.
			if _, err := arb.Claim(ctx, "p", "backup@a", 0); !errors.Is(err, arbiter.ErrLostClaim) {
				t.Fatalf("old winner's retry: %v", err)
			}
			if r, err := arb.Read(ctx, "p"); err != nil || r.Generation != 2 || r.Owner != "primary@b" || r.Claimed.IsZero() {
				t.Fatalf("read: %v, %v", r, err)
			}
			if r, err := arb.Read(ctx, "other"); err != nil || r.Generation != 0 {
				t.Fatalf("pairs are independent: %v, %v", r, err)
			}
			for _, bad := range []struct{ pair, owner string }{{"", "x"}, {"../x", "x"}, {"p", ""}, {"p", "a\nb"}, {"p", strings.Repeat("o", arbiter.MaxOwnerLen+1)}} {
				if _, err := arb.Claim(ctx, bad.pair, bad.owner, 2); !errors.Is(err, arbiter.ErrInvalid) {
					t.Errorf("claim(%q, %q): %v, want arbiter.ErrInvalid", bad.pair, bad.owner, err)
				}
			}
		})
	}
}

// TestEtcdUnreachable: nothing listens at the endpoint; Claim and Read say
// so, in bounded time, and guess nothing.
func TestEtcdUnreachable(t *testing.T) {
	u := arbitertest.FreeURL(t) // closed again: nothing listens there
	e, err := arbiter.NewEtcd(arbiter.EtcdConfig{Endpoints: []string{u.String()}, RequestTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	rec, err := e.Claim(ctx, "p", "backup", 0)
	if !errors.Is(err, arbiter.ErrUnreachable) || errors.Is(err, arbiter.ErrLostClaim) || rec.Generation != 0 {
		t.Fatalf("claim against no etcd: %v, %v", rec, err)
	}
	if !strings.Contains(err.Error(), u.Host) || !strings.Contains(err.Error(), "outcome unknown") {
		t.Errorf("message should name the endpoint and the unknown outcome: %v", err)
	}
	if _, err := e.Read(ctx, "p"); !errors.Is(err, arbiter.ErrUnreachable) {
		t.Fatalf("read against no etcd: %v", err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer dcancel()
	if _, err := e.Read(dctx, "p"); !errors.Is(err, arbiter.ErrUnreachable) {
		t.Fatalf("read whose caller's deadline passed first: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.Claim(cctx, "p", "backup", 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("claim with a cancelled context: %v", err)
	}
}
