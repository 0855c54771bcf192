// Package arbitertest holds the test every arbiter.Arbiter must pass: many
// goroutines and many processes claim the same generation at the same
// instant, round after round; exactly one wins each round and every loser
// names the winner. Backends and the storage server run the same body.
package arbitertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/storage/arbiter"
)

// helperEnv marks a re-executed test binary as a claim helper.
const helperEnv = "FTVM_ARBITERTEST_HELPER"

// HelperMain turns the test binary into a claim helper when the race
// started it as one, and otherwise returns. Call it first in TestMain;
// open builds the helper's own Arbiter from the environment the race's
// Config.HelperEnv gave it.
func HelperMain(open func() (arbiter.Arbiter, error)) {
	if os.Getenv(helperEnv) == "" {
		return
	}
	arb, err := open()
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	os.Exit(serveClaims(arb, os.Stdin, os.Stdout))
}

// serveClaims answers lines "PAIR SEEN OWNER START_UNIX_NANO": at START it
// claims and prints "ok GEN OWNER", "lost GEN OWNER" or "error MESSAGE".
func serveClaims(arb arbiter.Arbiter, in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 {
			fmt.Fprintln(out, "error malformed command", sc.Text())
			continue
		}
		seen, _ := strconv.ParseUint(f[1], 10, 64)
		start, _ := strconv.ParseInt(f[3], 10, 64)
		time.Sleep(time.Until(time.Unix(0, start)))
		fmt.Fprintln(out, formatOutcome(claimOnce(arb, f[0], f[2], seen)))
	}
	return 0
}

// outcome is one claimant's result in a round.
type outcome struct {
	owner  string
	won    bool
	gen    uint64 // the generation won, or the one the loser was told of
	holder string // the owner the loser was told of
	err    string // neither a win nor a clean loss
}

func claimOnce(arb arbiter.Arbiter, pair, owner string, seen uint64) outcome {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := arb.Claim(ctx, pair, owner, seen)
	var lost *arbiter.LostClaimError
	switch {
	case err == nil:
		return outcome{owner: owner, won: true, gen: rec.Generation, holder: rec.Owner}
	case errors.As(err, &lost) && errors.Is(err, arbiter.ErrLostClaim):
		return outcome{owner: owner, gen: lost.Current.Generation, holder: lost.Current.Owner}
	}
	return outcome{owner: owner, err: err.Error()}
}

func formatOutcome(o outcome) string {
	switch {
	case o.err != "":
		return "error " + strings.ReplaceAll(o.err, "\n", " ")
	case o.won:
		return fmt.Sprintf("ok %d %s", o.gen, o.holder)
	}
	return fmt.Sprintf("lost %d %s", o.gen, o.holder)
}

func parseOutcome(owner, line string) outcome {
	kind, rest, _ := strings.Cut(line, " ")
	if kind == "error" {
		return outcome{owner: owner, err: rest}
	}
	gen, holder, _ := strings.Cut(rest, " ")
	g, err := strconv.ParseUint(gen, 10, 64)
	if err != nil || (kind != "ok" && kind != "lost") {
		return outcome{owner: owner, err: "unparsable helper answer " + strconv.Quote(line)}
	}
	return outcome{owner: owner, won: kind == "ok", gen: g, holder: holder}
}

// Config sizes a race.
type Config struct {
	Pair                          string
	Goroutines, Processes, Rounds int
	// HelperEnv is the environment (besides the marker HelperMain looks
	// for) from which a helper process opens its Arbiter.
	HelperEnv []string
}

// Race runs cfg.Rounds rounds in which cfg.Goroutines goroutines sharing
// arb and cfg.Processes helper processes (this test binary, re-executed)
// all claim the pair from its current generation at the same instant.
func Race(t *testing.T, arb arbiter.Arbiter, cfg Config) {
	t.Helper()
	helpers := startHelpers(t, cfg)
	ctx := context.Background()
	wins := map[string]int{}
	for round := 0; round < cfg.Rounds; round++ {
		cur, err := arb.Read(ctx, cfg.Pair)
		if err != nil {
			t.Fatalf("round %d: read: %v", round, err)
		}
		seen := cur.Generation
		start := time.Now().Add(20 * time.Millisecond)
		results := make(chan outcome, cfg.Goroutines+cfg.Processes)
		var wg sync.WaitGroup
		for i := 0; i < cfg.Goroutines; i++ {
			owner := fmt.Sprintf("goroutine-%d", i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Until(start))
				results <- claimOnce(arb, cfg.Pair, owner, seen)
			}()
		}
		for _, h := range helpers {
			if _, err := fmt.Fprintf(h.stdin, "%s %d %s %d\n", cfg.Pair, seen, h.owner, start.UnixNano()); err != nil {
				t.Fatalf("round %d: command %s: %v", round, h.owner, err)
			}
		}
		for _, h := range helpers {
			if !h.out.Scan() {
				t.Fatalf("round %d: helper %s ended: %v", round, h.owner, h.out.Err())
			}
			results <- parseOutcome(h.owner, h.out.Text())
		}
		wg.Wait()
		close(results)
		var winner string
		var all []outcome
		for o := range results {
			all = append(all, o)
			if o.err != "" {
				t.Fatalf("round %d: %s: %s", round, o.owner, o.err)
			}
			if o.won {
				if winner != "" {
					t.Fatalf("round %d from generation %d: both %s and %s won", round, seen, winner, o.owner)
				}
				winner = o.owner
				if o.gen != seen+1 {
					t.Fatalf("round %d: %s won generation %d, want %d", round, o.owner, o.gen, seen+1)
				}
			}
		}
		if winner == "" {
			t.Fatalf("round %d from generation %d: nobody won: %+v", round, seen, all)
		}
		wins[strings.SplitN(winner, "-", 2)[0]]++
		for _, o := range all {
			if !o.won && (o.gen != seen+1 || o.holder != winner) {
				t.Fatalf("round %d: loser %s was told generation %d owned by %q; %s won %d", round, o.owner, o.gen, o.holder, winner, seen+1)
			}
		}
		after, err := arb.Read(ctx, cfg.Pair)
		if err != nil || after.Generation != seen+1 || after.Owner != winner {
			t.Fatalf("round %d: record after the claims is %v (%v); want generation %d owned by %s", round, after, err, seen+1, winner)
		}
	}
	t.Logf("%d rounds of %d goroutines and %d processes: wins %v", cfg.Rounds, cfg.Goroutines, cfg.Processes, wins)
}

type helper struct {
	owner string
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startHelpers(t *testing.T, cfg Config) []helper {
	t.Helper()
	var hs []helper
	for i := 0; i < cfg.Processes; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(append(os.Environ(), helperEnv+"=1"), cfg.HelperEnv...)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			stdin.Close()
			cmd.Wait()
		})
		h := helper{owner: fmt.Sprintf("process-%d-pid%d", i, cmd.Process.Pid), stdin: stdin, out: bufio.NewScanner(stdout)}
		if !h.out.Scan() || h.out.Text() != "ready" {
			t.Fatalf("helper %d did not start: %q %v", i, h.out.Text(), h.out.Err())
		}
		hs = append(hs, h)
	}
	return hs
}
