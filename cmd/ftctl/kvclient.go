package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/testbench/kvclient"
)

// kvClientConfig is what the flags of 'ftctl testbench kvclient' set.
type kvClientConfig struct {
	addr                          string
	clients                       int
	duration, wait, timeout, each time.Duration
	history                       string
	linearizable                  bool
	checkTimeout                  time.Duration
}

func newKVClientCommand() *cobra.Command {
	var cfg kvClientConfig
	cmd := &cobra.Command{
		Use:   "kvclient --addr HOST:PORT [--duration 20s]",
		Short: "Drive the guest's kv workload with checked concurrent traffic; check the history is linearizable",
		Long: `Connect to the kv workload of a guest booted with ftvm.workload=kv (usually
through a port forward of 'ftctl net serve' or 'ftctl run --net auto'), then
run --clients clients, each on its own connection sending mixed PUT/GET/ECHO
requests one at a time, for --duration. Every answer is checked as it
comes: an ECHO comes back unchanged, a PUT gets OK with a sequence number
above every one its client saw before, a GET answers VALUE or NOTFOUND
(with one client: exactly the value it last put). Keys carry a per-run
prefix, so earlier runs against the same disk do not matter.

Every request is recorded (client, operation, key, value, when it was sent
and answered on one monotonic clock, the answer). A request whose
connection fails is recorded with an unknown outcome (it may or may not
have taken effect) and counts as an error; its client stops. After the run
the client reads back every key it wrote, over a new connection: each must
hold its last acknowledged value. Then the whole history, read-back
included, is checked for linearizability against a model of the kv store
(porcupine). --history writes it as JSON lines (times in Unix
nanoseconds); if it is not linearizable, porcupine's HTML view of it is
written beside it (FILE with .html).

A port forward accepts connections before the guest's server listens (and
then closes them), so each connection is retried for up to --wait and
counts as made only after one ECHO round trip. Behind a fault-tolerant
pair, requests in flight when the primary fails wait for the backup to go
live: --timeout is generous for that.

It prints a progress line every --progress and a summary: requests, rate,
round-trip latency (median, 99th percentile, maximum), the longest wait for
an answer and when its request was sent, the read-back, and the verdict.

Exit status: 0 when everything checked out; 1 when the server could not be
reached or a request failed (connection closed, no answer within
--timeout); 2 on a wrong answer, a key that does not read back, or a
history that is not linearizable (or could not be checked in time); 130
after Ctrl-C.`,
		Example: `  ftctl net serve --socket /tmp/net.sock --forward 127.0.0.1:7000=192.168.127.2:7000 &
  ftctl run --image out/image --net /tmp/net.sock --ip 192.168.127.2/24 --append ftvm.workload=kv &
  ftctl testbench kvclient --addr 127.0.0.1:7000 --duration 20s --history /tmp/kv-history.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.addr == "" {
				return errors.New("--addr HOST:PORT is required: where the kv server (or a forward to it) listens")
			}
			if cfg.clients < 1 {
				return fmt.Errorf("--clients %d: want at least 1", cfg.clients)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			err := driveKV(ctx, cfg, cmd.OutOrStdout())
			if ctx.Err() != nil {
				return &exitError{code: 130, err: errors.New("stopped")}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.addr, "addr", "", "the kv server's address, `HOST:PORT` (required)")
	f.IntVar(&cfg.clients, "clients", 4, "how many clients, each on its own connection")
	f.DurationVar(&cfg.duration, "duration", 20*time.Second, "how long to send requests")
	f.DurationVar(&cfg.wait, "wait", 60*time.Second, "how long to retry a connection until the server answers")
	f.DurationVar(&cfg.timeout, "timeout", kvclient.DefaultRequestTimeout, "fail a request that gets no answer within this long")
	f.DurationVar(&cfg.each, "progress", 5*time.Second, "print a progress line this often (0: never)")
	f.StringVar(&cfg.history, "history", "", "write every request and its answer to `FILE` as JSON lines")
	f.BoolVar(&cfg.linearizable, "check-linearizable", true, "check that the history is linearizable")
	f.DurationVar(&cfg.checkTimeout, "check-timeout", 5*time.Minute, "give up the linearizability check after this long")
	return cmd
}

// driveKV is the command's work: connect, run, read back, check.
func driveKV(ctx context.Context, cfg kvClientConfig, out io.Writer) error {
	fmt.Fprintf(out, "kvclient: connecting %d clients to %s (retrying for up to %v)\n", cfg.clients, cfg.addr, cfg.wait)
	start := time.Now()
	conns := make([]*kvclient.Conn, 0, cfg.clients)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range cfg.clients {
		c, err := kvclient.Dial(ctx, cfg.addr, cfg.wait)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	fmt.Fprintf(out, "kvclient: the server answered an ECHO on each connection after %v; %v of mixed PUT/GET/ECHO, every answer checked\n",
		time.Since(start).Round(time.Millisecond), cfg.duration)
	h := kvclient.NewHistory()
	res, runErr := kvclient.RunClients(ctx, conns, kvclient.Options{
		Duration: cfg.duration, RequestTimeout: cfg.timeout, ProgressEvery: cfg.each, Progress: out, History: h,
	})
	fmt.Fprintf(out, "kvclient: %v\n", res)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Fprintf(out, "kvclient: errors: %d\n", res.Failed)
	if op, ok := h.Longest(); ok {
		fmt.Fprintf(out, "kvclient: longest wait for an answer: %v, client %d's %s sent at %s (+%v)\n",
			op.Wait().Round(time.Millisecond), op.Client, op.Kind, h.At(op.Call).Format("15:04:05.000"), op.Call.Round(time.Millisecond))
	}
	var wrong *kvclient.WrongAnswer
	if errors.As(runErr, &wrong) {
		writeHistory(h, cfg.history, out)
		return &exitError{code: 2, err: fmt.Errorf("after %d correct answers: %w", res.Requests, runErr)}
	}

	var failures []string
	if runErr != nil {
		failures = append(failures, fmt.Sprintf("%d requests failed; first: %v", res.Failed, runErr))
	}
	exit := 1
	if rb, err := readBack(ctx, cfg, h, out); err != nil {
		failures = append(failures, err.Error())
	} else if len(rb.Mismatches) > 0 {
		exit = 2
		failures = append(failures, fmt.Sprintf("%d of %d keys did not read back their last acknowledged value: %s",
			len(rb.Mismatches), rb.Keys, strings.Join(rb.Mismatches[:min(3, len(rb.Mismatches))], "; ")))
	}
	written := writeHistory(h, cfg.history, out)
	if cfg.linearizable {
		checked := time.Now()
		v := kvclient.CheckLinearizable(h, cfg.checkTimeout)
		fmt.Fprintf(out, "kvclient: %v (checked in %v)\n", v, time.Since(checked).Round(time.Millisecond))
		if !v.Linearizable() {
			exit = 2
			failures = append(failures, "the history is not linearizable")
			if written {
				visualize(v, cfg.history, out)
			}
		}
	}
	if len(failures) > 0 {
		return &exitError{code: exit, err: errors.New(strings.Join(failures, "; "))}
	}
	fmt.Fprintf(out, "kvclient: all %d answers correct\n", res.Requests)
	return nil
}

// readBack reads every written key over a new connection.
func readBack(ctx context.Context, cfg kvClientConfig, h *kvclient.History, out io.Writer) (kvclient.ReadBack, error) {
	c, err := kvclient.Dial(ctx, cfg.addr, cfg.wait)
	if err != nil {
		return kvclient.ReadBack{}, fmt.Errorf("read back: %w", err)
	}
	defer c.Close()
	rb, err := kvclient.ReadBackKeys(ctx, c, h, cfg.clients, cfg.timeout)
	if err != nil {
		return rb, err
	}
	if len(rb.Mismatches) == 0 {
		fmt.Fprintf(out, "kvclient: read back all %d keys written: each holds its last acknowledged value\n", rb.Keys)
	}
	return rb, nil
}

// writeHistory writes h to path (if not empty) and says so.
func writeHistory(h *kvclient.History, path string, out io.Writer) bool {
	if path == "" {
		return false
	}
	if err := createFile(path, h.WriteJSONLines); err != nil {
		fmt.Fprintf(out, "kvclient: history: %v\n", err)
		return false
	}
	fmt.Fprintf(out, "kvclient: history of %d requests written to %s\n", len(h.Ops()), path)
	return true
}

// visualize writes porcupine's view of a failed check beside the history.
func visualize(v kvclient.Verdict, history string, out io.Writer) {
	path := strings.TrimSuffix(history, filepath.Ext(history)) + ".html"
	if path == history {
		path += ".html"
	}
	if err := createFile(path, v.Visualize); err != nil {
		fmt.Fprintf(out, "kvclient: visualization: %v\n", err)
		return
	}
	fmt.Fprintf(out, "kvclient: porcupine's view of the history: %s\n", path)
}

// createFile creates path and fills it with write.
func createFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
