package guests

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raftkv"
	"github.com/ftvm/ftvm/testbench/guesttest"
	"github.com/ftvm/ftvm/testbench/kvmhost"
)

// skipUnlessDemos skips a demo unless $FTVM_DEMOS is set (make demo-raft
// and demo-mapreduce set it; so does scripts/test.sh). A demo boots four
// guests, one of them a pair: about 4.5 minutes in the nested host on a
// 2-core machine, so the suite runs each once, in its own step without the
// race detector, rather than with every run of this package.
func skipUnlessDemos(t *testing.T) {
	if os.Getenv("FTVM_DEMOS") == "" {
		t.Skip("a demo: set FTVM_DEMOS=1 (make demo-raft, make demo-mapreduce)")
	}
}

// demoScale is $FTVM_DEMO_SCALE, what the demos' fixed minimum work is
// multiplied by (default 1; make demo-raft DEMO_SCALE=N sets it).
func demoScale() int {
	if n, err := strconv.Atoi(os.Getenv("FTVM_DEMO_SCALE")); err == nil && n > 1 {
		return n
	}
	return 1
}

// The Raft demo's fixed minimum work (times demoScale): clients, and the
// ops each must have answered before the first kill and invoked after
// each kill.
const (
	raftDemoClients   = 3
	raftDemoOpsBefore = 3
	raftDemoOpsAfter  = 4
	// Replica 0's election timeout, and so its RPC timeout (half of
	// it): in the nested host a guest-to-guest RPC of a pair's guest
	// often took over 5 s (two replicas, one a pair, took 1m51s to elect
	// a leader with 10 s).
	raftDemoLeaderMS    = 30000
	raftDemoFollowersMS = 60000 // the others'
)

// statusRE matches the raftkv guest's periodic status line.
var statusRE = regexp.MustCompile(`ftvm-guest raftkv status id=(\d+) term=(\d+) leader=(true|false)`)

// electionRE matches Raft's log line of a replica starting an election
// (the only way a term goes up).
var electionRE = regexp.MustCompile(`msg=election term=(\d+)`)

// TestRaftDemo is the Raft demo of what ftvm buys a replicated service.
// Three raftkv replicas on the switch, each with its own disk; replica 0
// runs as an ftvm pair and leads (it boots first, and its election
// timeout is half the others', so it asks for votes first); three
// clients on the host run Put, Append and Get through port forwards the
// whole time. First the leader's primary is SIGKILLed: its backup goes
// live, and no replica starts an election (every term the replicas print
// is the one before the kill), no client op fails. Then the now
// unprotected leader's VM dies (its plug pulled): the followers time
// out, elect a new leader, and the clients see the downtime. The whole
// history must be linearizable (porcupine), and both timelines are
// logged side by side.
func TestRaftDemo(t *testing.T) {
	skipUnlessDemos(t)
	if kvmhost.RanElsewhere(t) {
		return
	}
	start := time.Now()
	const n = 3
	configs, fwds := raftReplicas(t, []int{raftDemoLeaderMS, raftDemoFollowersMS, raftDemoFollowersMS})
	// Replica 0 boots first: a pair boots slower than a plain VM (its
	// primary waits for the backup), and replicas that came up first
	// elected one of themselves (seen once). Waiting alone, it canvasses
	// at least every 2*raftDemoLeaderMS of its guest time; the others,
	// once up, wait raftDemoFollowersMS at least before they canvass, so
	// replica 0 usually asks first.
	pair := guesttest.StartPair(t, "raft0", configs[0])
	// Twice a plain VM's bound: a pair booting on a busy machine took
	// over 3 minutes to reach its /init.
	pair.Console.WaitFor(t, "ftvm-guest raftkv listening", pair.Stopped, 2*bootTimeout)
	followers := []*guesttest.Guest{
		guesttest.StartGuest(t, "replica 1", configs[1]),
		guesttest.StartGuest(t, "replica 2", configs[2]),
	}
	for _, g := range followers {
		g.Console.WaitFor(t, "ftvm-guest raftkv listening", g.Stopped, bootTimeout)
	}
	t.Logf("replica 0 (an ftvm pair) and replicas 1, 2 up in %v", time.Since(start).Round(time.Millisecond))
	// consoles are what the replicas printed, by replica, as the world saw
	// it: replica 0's through its primary until the kill.
	consoles := []*guesttest.Console{pair.Console, followers[0].Console, followers[1].Console}

	load := startRaftLoad(t, fwds)
	load.waitOps(t, time.Time{}, raftDemoOpsBefore*demoScale(), 4*time.Minute)
	// Should a follower lead all the same (replica 0's guest runs slower
	// than the others: its CPU also replays it), its VM stops and boots
	// again: of the two left, replica 0 times out first.
	for try := 0; ; try++ {
		l := leaderNow(consoles)
		if l == 0 {
			break
		}
		if l < 0 || try == 2 {
			t.Fatalf("replica %d leads, not replica 0 (the ftvm pair); consoles:\n%s", l, joinConsoles(consoles))
		}
		term := lastTerms(t, consoles)[l]
		followers[l-1].Stop(t)
		t.Logf("replica %d leads (term %d), not replica 0: stopped its VM to boot it again", l, term)
		waitNewLeader(t, consoles, consoleMarks(consoles), term, 4*time.Minute)
		followers[l-1] = guesttest.StartGuest(t, fmt.Sprintf("replica %d again", l), configs[l])
		followers[l-1].Console.WaitFor(t, "ftvm-guest raftkv listening", followers[l-1].Stopped, bootTimeout)
		consoles[l] = followers[l-1].Console
		load.waitOps(t, time.Now(), 1, 4*time.Minute)
		waitTermsAfter(t, consoles, consoleMarks(consoles), time.Minute)
	}
	termBefore := lastTerms(t, consoles)
	t.Logf("%d ops answered; replica 0 leads; terms %v", load.answered(), termBefore)

	// With ftvm: kill the leader's primary.
	ft := demoRun{name: "with ftvm"}
	mark := consoleMarks(consoles)
	ft.killed = pair.KillPrimary(t)
	retries0 := load.retries()
	fo := pair.WaitLive(t, 3*time.Minute)
	ft.live = fo.PrimaryLost.Add(fo.Live)
	backupMark := len(pair.BackupConsole.String())
	load.waitOps(t, ft.killed, raftDemoOpsAfter*demoScale(), 4*time.Minute)
	ft.retries = load.retries() - retries0
	if !pair.PrimaryKilled() {
		t.Fatal("the primary's process did not die of the kill")
	}
	// Every replica prints its term every 5 s: wait for a line from each
	// printed after the kill (replica 0's by the live backup).
	liveConsoles := []*guesttest.Console{pair.BackupConsole, followers[0].Console, followers[1].Console}
	liveMarks := []int{backupMark, mark[1], mark[2]}
	termAfter := waitTermsAfter(t, liveConsoles, liveMarks, time.Minute)
	for i := range n {
		if termAfter[i] != termBefore[i] {
			t.Errorf("replica %d: term %d before the kill, %d after: an election happened", i, termBefore[i], termAfter[i])
		}
		if m := electionRE.FindString(liveConsoles[i].String()[liveMarks[i]:]); m != "" {
			t.Errorf("replica %d started an election after the kill: %s", i, m)
		}
	}
	ft.fill(load, termAfter)
	ft.detail = fmt.Sprintf("backup live +%v after the kill (%v)", ft.live.Sub(ft.killed).Round(time.Millisecond), fo)
	if t.Failed() {
		t.FailNow()
	}

	// Without ftvm: the leader (now the live backup, unprotected) dies.
	plain := demoRun{name: "without ftvm"}
	mark = consoleMarks(liveConsoles)
	retries0 = load.retries()
	plain.killed = time.Now()
	pair.StopBackup()
	plain.newLeader, plain.elected = waitNewLeader(t, liveConsoles[1:], mark[1:], termBefore[0], 4*time.Minute)
	plain.newLeader++ // consoles[1:] are replicas 1 and 2
	load.waitOps(t, plain.killed, raftDemoOpsAfter*demoScale(), 4*time.Minute)
	plain.retries = load.retries() - retries0
	plain.fill(load, waitTermsAfter(t, liveConsoles[1:], mark[1:], time.Minute))
	load.stop(t)

	if err := load.h.Check(30 * time.Second); err != nil {
		t.Fatalf("%v; consoles:\n%s", err, joinConsoles(liveConsoles))
	}
	t.Logf("%s\n%d operations by %d clients linearizable (porcupine), %d requests; whole test %v\nwith ftvm: %s",
		raftTable(ft, plain, termBefore), len(load.h.Operations()), raftDemoClients, load.attempts(), time.Since(start).Round(time.Millisecond), ft.detail)
}

// demoRun is one kill as the test saw it.
type demoRun struct {
	name         string
	killed, live time.Time
	elected      time.Time // first leader line of a newer term (without ftvm)
	newLeader    int
	firstAnswer  time.Duration // first answer after the kill
	maxGap       time.Duration // longest silence between answers across the kill
	baselineGap  time.Duration // longest silence between answers before it
	retries      int
	opsAfter     int
	termsAfter   []uint64
	detail       string
}

// fill reads the run's client figures from the load's record.
func (r *demoRun) fill(l *raftLoad, terms []uint64) {
	r.termsAfter = terms
	r.firstAnswer, r.maxGap, r.baselineGap, r.opsAfter = l.gaps(r.killed)
}

// raftTable is both kills side by side.
func raftTable(ft, plain demoRun, termBefore []uint64) string {
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	var b strings.Builder
	row := func(what, a, c string) { fmt.Fprintf(&b, "| %-44s | %-28s | %-28s |\n", what, a, c) }
	row("the leader's VM (replica 0) dies", ft.name+": SIGKILL of its primary", plain.name+": plug pulled")
	row("---", "---", "---")
	row("backup live (after the kill)", ms(ft.live.Sub(ft.killed)), "-")
	row("new leader elected (after the kill)", "none", fmt.Sprintf("replica %d, %s", plain.newLeader, ms(plain.elected.Sub(plain.killed))))
	row("terms before -> after", fmt.Sprintf("%v -> %v", termBefore, ft.termsAfter), fmt.Sprintf("%v -> %v (replicas 1, 2)", ft.termsAfter[1:], plain.termsAfter))
	row("first answer after the kill", ms(ft.firstAnswer), ms(plain.firstAnswer))
	row("client-visible downtime (longest gap)", ms(ft.maxGap), ms(plain.maxGap))
	row("longest gap before the kill", ms(ft.baselineGap), ms(plain.baselineGap))
	row("client retries (timeouts, wrong leader)", strconv.Itoa(ft.retries), strconv.Itoa(plain.retries))
	row("client errors", "0", "0")
	row("ops answered after the kill", strconv.Itoa(ft.opsAfter), strconv.Itoa(plain.opsAfter))
	return b.String()
}

// raftLoad is the demo's clients: each runs ops back to back until
// stopped, recording them in h and when each was invoked and answered.
type raftLoad struct {
	h      *raftkv.History
	clerks []*raftkv.Clerk
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	ops    [][2]time.Time // invoked, answered
	errs   []error
	// clerkRetries is each clerk's Retries after its last op (the clerk
	// itself is its client's goroutine's alone).
	clerkRetries []int
	changed      chan struct{}
}

func startRaftLoad(t *testing.T, fwds []string) *raftLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &raftLoad{h: raftkv.NewHistory(), cancel: cancel, changed: make(chan struct{}, 1), clerkRetries: make([]int, raftDemoClients)}
	t.Cleanup(func() { l.cancel(); l.wg.Wait() })
	for c := range raftDemoClients {
		ck := raftkv.NewTCPClerk(fwds)
		// Above replica 0's op timeout (its election timeout), as in
		// TestRaftKVGuests: a clerk gives up on a server only after this.
		ck.CallTimeout = raftDemoLeaderMS*time.Millisecond + 15*time.Second
		l.clerks = append(l.clerks, ck)
		l.wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				invoked := time.Now()
				err := clientOp(ctx, l.h, ck, c, i)
				answered := time.Now()
				l.mu.Lock()
				l.clerkRetries[c] = ck.Retries
				switch {
				case err == nil:
					l.ops = append(l.ops, [2]time.Time{invoked, answered})
				case ctx.Err() == nil:
					l.errs = append(l.errs, fmt.Errorf("client %d op %d: %w", c, i, err))
				}
				l.mu.Unlock()
				select {
				case l.changed <- struct{}{}:
				default:
				}
				if err != nil {
					return
				}
			}
		})
	}
	return l
}

// waitOps waits until at least per ops per client were invoked after
// since and answered (counted over all clients: per*clients).
func (l *raftLoad) waitOps(t *testing.T, since time.Time, per int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		errs, n := slices.Clone(l.errs), 0
		for _, op := range l.ops {
			if op[0].After(since) {
				n++
			}
		}
		l.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("client errors: %v", errs)
		}
		if n >= per*raftDemoClients {
			return
		}
		select {
		case <-l.changed:
		case <-deadline:
			t.Fatalf("only %d ops invoked after %v answered in %v", n, since.Format(time.TimeOnly), timeout)
		}
	}
}

// gaps returns, for a kill at killed, the first answer after it, the
// longest time without any answer from the last answer before the kill
// to the last answer so far, the same over the window before the kill,
// and the ops answered after the kill.
func (l *raftLoad) gaps(killed time.Time) (first, gap, before time.Duration, after int) {
	l.mu.Lock()
	var answers []time.Time
	for _, op := range l.ops {
		answers = append(answers, op[1])
	}
	l.mu.Unlock()
	slices.SortFunc(answers, func(a, b time.Time) int { return a.Compare(b) })
	var prev time.Time
	for _, a := range answers {
		if !prev.IsZero() {
			if a.After(killed) {
				gap = max(gap, a.Sub(prev))
			} else {
				before = max(before, a.Sub(prev))
			}
		}
		if a.After(killed) {
			if after == 0 {
				first = a.Sub(killed)
			}
			after++
		}
		prev = a
	}
	return first, gap, before, after
}

func (l *raftLoad) answered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ops)
}

// retries counts the clerks' requests sent again (a timeout, a wrong
// leader, a lost connection) by the ops answered so far.
func (l *raftLoad) retries() (n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.clerkRetries {
		n += r
	}
	return n
}

// attempts counts the clerks' requests; only once the clients stopped.
func (l *raftLoad) attempts() (n int) {
	for _, ck := range l.clerks {
		n += ck.Attempts
	}
	return n
}

// stop ends the clients and fails the test if any saw an error.
func (l *raftLoad) stop(t *testing.T) {
	t.Helper()
	l.cancel()
	l.wg.Wait()
	if len(l.errs) > 0 {
		t.Fatalf("client errors: %v", l.errs)
	}
}

// leaderNow is the replica whose latest status line says it leads, -1 if
// none does.
func leaderNow(consoles []*guesttest.Console) int {
	for i, c := range consoles {
		if m := statusRE.FindAllStringSubmatch(c.String(), -1); len(m) > 0 && m[len(m)-1][3] == "true" {
			return i
		}
	}
	return -1
}

// lastTerms is each replica's term in its latest status line.
func lastTerms(t *testing.T, consoles []*guesttest.Console) []uint64 {
	t.Helper()
	terms := make([]uint64, len(consoles))
	for i, c := range consoles {
		m := statusRE.FindAllStringSubmatch(c.String(), -1)
		if len(m) == 0 {
			t.Fatalf("replica %d printed no status line; console:\n%s", i, c.String())
		}
		terms[i], _ = strconv.ParseUint(m[len(m)-1][2], 10, 64)
	}
	return terms
}

// consoleMarks is how much each console holds now.
func consoleMarks(consoles []*guesttest.Console) []int {
	var marks []int
	for _, c := range consoles {
		marks = append(marks, len(c.String()))
	}
	return marks
}

// waitTermsAfter waits until each console shows a status line past its
// mark, and returns the term of the latest.
func waitTermsAfter(t *testing.T, consoles []*guesttest.Console, marks []int, timeout time.Duration) []uint64 {
	t.Helper()
	terms := make([]uint64, len(consoles))
	deadline := time.Now().Add(timeout)
	for i, c := range consoles {
		for {
			m := statusRE.FindAllStringSubmatch(c.String()[marks[i]:], -1)
			// The whole line: the console receives it a byte at a time.
			if len(m) > 0 && strings.Contains(c.String()[marks[i]:], m[len(m)-1][0]+"\r\n") {
				terms[i], _ = strconv.ParseUint(m[len(m)-1][2], 10, 64)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("console %d printed no status line in %v", i, timeout)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return terms
}

// waitNewLeader waits until one of consoles logs leadership of a term
// above term, past its mark, and returns which one and when the test saw
// it.
func waitNewLeader(t *testing.T, consoles []*guesttest.Console, marks []int, term uint64, timeout time.Duration) (int, time.Time) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for i, c := range consoles {
			for _, m := range leaderRE.FindAllStringSubmatch(c.String()[marks[i]:], -1) {
				if tm, _ := strconv.ParseUint(m[2], 10, 64); tm > term {
					return i, time.Now()
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no new leader within %v; consoles:\n%s", timeout, joinConsoles(consoles))
	return 0, time.Time{}
}

func joinConsoles(consoles []*guesttest.Console) string {
	var b strings.Builder
	for i, c := range consoles {
		fmt.Fprintf(&b, "--- console %d:\n%s\n", i, c.String())
	}
	return b.String()
}
