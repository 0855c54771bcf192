// Package kvclient is a client of the guest's kv workload
// (images/workloads/kv): it connects through a port forward that may accept
// before the guest listens, drives mixed PUT/GET/ECHO traffic from one or
// more concurrent clients in which every answer is checked against the
// protocol and the client's own writes, records the history of every
// request, checks it linearizable against a model of the store
// (porcupine), and reads back every key written.
package kvclient

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Conn is one connection to a kv server. Requests go one at a time.
type Conn struct {
	conn net.Conn
	r    *bufio.Reader
}

const (
	dialAttemptTimeout = 5 * time.Second
	// The proving ECHO may wait long: behind a primary its answer is an
	// output held until the backup acks the log entry that produced it, and
	// a backup replaying the first checkpoint lags tens of seconds in a
	// nested host. A closed forward (server not listening yet) still fails
	// at once, with EOF.
	proofTimeout = 60 * time.Second
	retryPause   = 500 * time.Millisecond
)

// Dial connects to the kv server at addr (host:port), retrying for up to
// within, and proves the path with one ECHO round trip: a port forward
// accepts before the guest's server listens, and then closes the
// connection. The returned connection has no deadline set.
func Dial(ctx context.Context, addr string, within time.Duration) (*Conn, error) {
	deadline := time.Now().Add(within)
	for attempt := 1; ; attempt++ {
		c, err := dialOnce(ctx, addr, deadline)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if time.Until(deadline) < retryPause {
			return nil, fmt.Errorf("no kv server answers at %s within %v (%d attempts); last: %w", addr, within, attempt, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(retryPause):
		}
	}
}

func dialOnce(ctx context.Context, addr string, deadline time.Time) (*Conn, error) {
	d := net.Dialer{Timeout: min(dialAttemptTimeout, max(time.Until(deadline), 100*time.Millisecond))}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &Conn{conn: nc, r: bufio.NewReader(nc)}
	token := "kvclient-" + strconv.FormatUint(rand.Uint64(), 36)
	reply, err := c.Do(ctx, "ECHO "+token, min(proofTimeout, max(time.Until(deadline), time.Second)))
	if err == nil && reply != token {
		err = &WrongAnswer{Request: "ECHO " + token, Got: reply, Want: token}
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connected, but no ECHO back: %w", err)
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// Do sends one request line (without its newline) and returns the reply
// line without its newline. timeout bounds the round trip (0: none); a
// cancelled ctx aborts it. After an error the connection's state is
// unknown: close it.
func (c *Conn) Do(ctx context.Context, req string, timeout time.Duration) (string, error) {
	var dl time.Time
	if timeout > 0 {
		dl = time.Now().Add(timeout)
	}
	c.conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c.conn, req+"\n"); err != nil {
		return "", c.failed(ctx, req, err)
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", c.failed(ctx, req, err)
	}
	return line[:len(line)-1], nil
}

func (c *Conn) failed(ctx context.Context, req string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("the server closed the connection")
	}
	return fmt.Errorf("%s: %w", clip(req), err)
}

// NetConn is the underlying connection; Reader buffers what it received.
// Writing to one and reading from the other is how a caller speaks the
// protocol itself.
func (c *Conn) NetConn() net.Conn { return c.conn }

// Reader is the connection's buffered reader (see NetConn).
func (c *Conn) Reader() *bufio.Reader { return c.r }

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }

// WrongAnswer is a reply that differs from what the protocol and the
// client's own earlier requests imply.
type WrongAnswer struct {
	Request, Got, Want string
}

func (e *WrongAnswer) Error() string {
	return fmt.Sprintf("wrong answer to %q: got %q, want %q", clip(e.Request), clip(e.Got), clip(e.Want))
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// Options shape a Run.
type Options struct {
	// Duration is how long to send requests.
	Duration time.Duration
	// Stop, if not nil, ends the run early once closed: each client
	// finishes the request it has in flight and sends no more. A test
	// uses it to end a run once enough happened, not after a guessed time.
	Stop <-chan struct{}
	// RequestTimeout bounds each round trip. Default 3 min: behind a
	// fault-tolerant pair a request in flight at a failover waits for the
	// backup to replay its log and go live.
	RequestTimeout time.Duration
	// ProgressEvery prints a progress line to Progress this often (0 or a
	// nil Progress: none).
	ProgressEvery time.Duration
	Progress      io.Writer
	// Keys is how many distinct keys the clients write. Default 256.
	Keys int
	// Seed makes each client's request sequence repeatable; 0 picks one at
	// random.
	Seed uint64
	// History, if not nil, records every request (see CheckLinearizable).
	History *History
}

// DefaultRequestTimeout is Options.RequestTimeout's default.
const DefaultRequestTimeout = 3 * time.Minute

// Result sums up a Run.
type Result struct {
	Clients                      int
	Requests, Puts, Gets, Echoes int
	// Failed counts requests whose connection failed before the answer:
	// their outcome is unknown.
	Failed        int
	Elapsed       time.Duration
	P50, P99, Max time.Duration
}

// PerSecond is the request rate.
func (r Result) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

func (r Result) String() string {
	s := fmt.Sprintf("%d requests in %v (%.1f req/s: %d PUT, %d GET, %d ECHO), latency p50 %v p99 %v max %v",
		r.Requests, round(r.Elapsed), r.PerSecond(), r.Puts, r.Gets, r.Echoes,
		round(r.P50), round(r.P99), round(r.Max))
	if r.Clients > 1 {
		s = fmt.Sprintf("%d clients, %s", r.Clients, s)
	}
	if r.Failed > 0 {
		s += fmt.Sprintf(", %d failed", r.Failed)
	}
	return s
}

// Run sends mixed traffic over c for opts.Duration, one request at a time;
// see RunClients.
func Run(ctx context.Context, c *Conn, opts Options) (Result, error) {
	return RunClients(ctx, []*Conn{c}, opts)
}

// RunClients runs one client per connection for opts.Duration, each
// sending one request at a time, and checks every answer:
//
//	ECHO <random hex>   -> the same text
//	PUT <key> <value>   -> OK <seq>, seq above every seq this client saw before
//	GET <key> (written) -> VALUE <the last value this client put>
//	GET <key> (never)   -> NOTFOUND
//
// With several clients the keys are shared, so a GET of a written key is
// only checked for its form (VALUE or NOTFOUND); that the values fit
// together is what CheckLinearizable checks in opts.History. Keys carry a
// per-run prefix, so values from earlier runs against a durable store do
// not matter.
//
// A wrong answer (a *WrongAnswer) stops every client. A failed request
// (connection lost, no answer within the timeout) stops its client; it
// is recorded with an unknown outcome and the others go on. RunClients
// returns ctx.Err() when ctx ends, else the first wrong answer, else the
// first failed request; the Result covers all answered requests.
func RunClients(ctx context.Context, conns []*Conn, opts Options) (Result, error) {
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.Keys <= 0 {
		opts.Keys = 256
	}
	if opts.Seed == 0 {
		opts.Seed = rand.Uint64()
	}
	if opts.History == nil {
		opts.History = NewHistory()
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	t := &tally{start: time.Now(), res: Result{Clients: len(conns)}}
	prefix := "kvc" + strconv.FormatUint(rand.New(rand.NewPCG(opts.Seed, 1)).Uint64()&0xffffffff, 36) + "-"
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		tr := newTraffic(opts.Seed+uint64(i), opts.Keys, prefix, i, len(conns) > 1)
		wg.Go(func() {
			errs[i] = runClient(runCtx, c, tr, opts, t)
			var wrong *WrongAnswer
			if errors.As(errs[i], &wrong) {
				stop()
			}
		})
	}
	if opts.ProgressEvery > 0 && opts.Progress != nil {
		done := make(chan struct{})
		var printer sync.WaitGroup
		printer.Go(func() { t.progress(opts.ProgressEvery, opts.Progress, done) })
		// Runs after wg.Wait below: no progress line is written once
		// RunClients has returned.
		defer printer.Wait()
		defer close(done)
	}
	wg.Wait()
	res := t.result()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	var wrong *WrongAnswer
	for _, err := range errs {
		if errors.As(err, &wrong) {
			return res, err
		}
	}
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// runClient is one client of RunClients.
func runClient(ctx context.Context, c *Conn, tr *traffic, opts Options, t *tally) error {
	h := opts.History
	n := 0
	for time.Since(t.start) < opts.Duration && !closed(opts.Stop) {
		q := tr.next()
		n++
		op := Op{Client: tr.client, Kind: q.kind.String(), Key: q.key, Call: h.now()}
		if q.kind != opGet {
			op.Value = q.value
		}
		reply, err := c.Do(ctx, q.req, opts.RequestTimeout)
		if err != nil {
			op.Unknown, op.Err = true, err.Error()
			h.add(op)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			t.failed()
			if tr.shared {
				return fmt.Errorf("client %d: request %d: %w", tr.client, n, err)
			}
			return fmt.Errorf("request %d: %w", n, err)
		}
		op.Return, op.Answer = h.now(), reply
		h.add(op)
		if err := tr.check(q, reply); err != nil {
			return err
		}
		t.answered(q.kind, op.Wait())
	}
	return nil
}

// closed reports whether c is closed (false for a nil channel).
func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// tally sums up the clients' answers as they come.
type tally struct {
	start time.Time

	mu  sync.Mutex
	res Result
	lat []time.Duration
}

func (t *tally) answered(kind opKind, wait time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lat = append(t.lat, wait)
	t.res.Requests++
	switch kind {
	case opPut:
		t.res.Puts++
	case opGet:
		t.res.Gets++
	case opEcho:
		t.res.Echoes++
	}
}

func (t *tally) failed() {
	t.mu.Lock()
	t.res.Failed++
	t.mu.Unlock()
}

func (t *tally) result() Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.res
	r.Elapsed = time.Since(t.start)
	r.P50, r.P99, r.Max = quantiles(t.lat)
	return r
}

// progress prints a line every period until done is closed.
func (t *tally) progress(period time.Duration, w io.Writer, done <-chan struct{}) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	window, last := 0, t.start
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			t.mu.Lock()
			win := slices.Clone(t.lat[window:])
			requests := t.res.Requests
			window = len(t.lat)
			t.mu.Unlock()
			p50, p99, _ := quantiles(win)
			span := now.Sub(last)
			fmt.Fprintf(w, "kvclient: %3.0fs  %6d requests, last %v: %.0f req/s, p50 %v p99 %v\n",
				now.Sub(t.start).Seconds(), requests, span.Round(100*time.Millisecond),
				float64(len(win))/span.Seconds(), round(p50), round(p99))
			last = now
		}
	}
}

type opKind int

const (
	opPut opKind = iota
	opGet
	opEcho
)

func (k opKind) String() string {
	switch k {
	case opPut:
		return "PUT"
	case opGet:
		return "GET"
	}
	return "ECHO"
}

type request struct {
	kind       opKind
	req        string
	key, value string // PUT: what is written; GET: the expected value; ECHO: the text
	found      bool   // GET: whether this client wrote key
	exact      bool   // GET: the answer must be exactly value (or NOTFOUND)
}

// traffic generates requests and knows what each answer must be.
type traffic struct {
	rng     *rand.Rand
	prefix  string
	keys    int
	client  int
	shared  bool // other clients write the same keys
	n       int
	values  map[string]string // the last value put per key
	written []string          // keys put, in first-write order
	seq     uint64            // the highest PUT sequence number seen
}

func newTraffic(seed uint64, keys int, prefix string, client int, shared bool) *traffic {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return &traffic{rng: rng, keys: keys, values: map[string]string{}, prefix: prefix, client: client, shared: shared}
}

func (t *traffic) randomHex(maxBytes int) string {
	b := make([]byte, 1+t.rng.IntN(maxBytes))
	for i := range b {
		b[i] = byte(t.rng.Uint32())
	}
	return hex.EncodeToString(b)
}

// next picks a request: 35% PUT, 45% GET (one in ten of a key never
// written), 20% ECHO.
func (t *traffic) next() request {
	t.n++
	switch p := t.rng.IntN(100); {
	case p < 35 || len(t.written) == 0:
		k := t.prefix + "k" + strconv.Itoa(t.rng.IntN(t.keys))
		// Values may hold spaces: the value is the rest of the line. They
		// are unique across clients, so each read names its write.
		v := "c" + strconv.Itoa(t.client) + "v" + strconv.Itoa(t.n) + " " + t.randomHex(48)
		return request{kind: opPut, req: "PUT " + k + " " + v, key: k, value: v}
	case p < 80:
		if t.rng.IntN(10) == 0 {
			k := t.prefix + "missing" + strconv.Itoa(t.client) + "-" + strconv.Itoa(t.n)
			return request{kind: opGet, req: "GET " + k, key: k, exact: true}
		}
		if t.shared {
			k := t.prefix + "k" + strconv.Itoa(t.rng.IntN(t.keys))
			return request{kind: opGet, req: "GET " + k, key: k}
		}
		k := t.written[t.rng.IntN(len(t.written))]
		return request{kind: opGet, req: "GET " + k, key: k, value: t.values[k], found: true, exact: true}
	default:
		text := t.randomHex(200)
		return request{kind: opEcho, req: "ECHO " + text, value: text}
	}
}

// check verifies reply against q and, for a PUT, records the write.
func (t *traffic) check(q request, reply string) error {
	switch q.kind {
	case opPut:
		seq, err := strconv.ParseUint(strings.TrimPrefix(reply, "OK "), 10, 64)
		if !strings.HasPrefix(reply, "OK ") || err != nil || seq <= t.seq {
			return &WrongAnswer{Request: q.req, Got: reply, Want: fmt.Sprintf("OK <seq above %d>", t.seq)}
		}
		t.seq = seq
		if _, ok := t.values[q.key]; !ok {
			t.written = append(t.written, q.key)
		}
		t.values[q.key] = q.value
	case opGet:
		if !q.exact {
			if reply != "NOTFOUND" && !strings.HasPrefix(reply, "VALUE ") {
				return &WrongAnswer{Request: q.req, Got: reply, Want: "VALUE <value> or NOTFOUND"}
			}
			return nil
		}
		want := "NOTFOUND"
		if q.found {
			want = "VALUE " + q.value
		}
		if reply != want {
			return &WrongAnswer{Request: q.req, Got: reply, Want: want}
		}
	case opEcho:
		if reply != q.value {
			return &WrongAnswer{Request: q.req, Got: reply, Want: q.value}
		}
	}
	return nil
}

// quantiles returns the median, 99th percentile (nearest rank) and
// maximum of lat; zeros for none.
func quantiles(lat []time.Duration) (p50, p99, maximum time.Duration) {
	if len(lat) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	rank := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return s[max(i, 0)]
	}
	return rank(0.50), rank(0.99), s[len(s)-1]
}

// round keeps about three significant digits of d.
func round(d time.Duration) time.Duration {
	r := time.Duration(1)
	for r*1000 <= d {
		r *= 10
	}
	return d.Round(r)
}
