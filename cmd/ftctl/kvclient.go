package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/testbench/kvclient"
)

func newKVClientCommand() *cobra.Command {
	var (
		addr                          string
		duration, wait, timeout, each time.Duration
	)
	cmd := &cobra.Command{
		Use:   "kvclient --addr HOST:PORT [--duration 20s]",
		Short: "Drive the guest's kv workload with checked mixed traffic and report latency",
		Long: `Connect to the kv workload of a guest booted with ftvm.workload=kv (usually
through a port forward of 'ftctl net serve' or 'ftctl run --net auto'), then
send mixed PUT/GET/ECHO requests, one at a time, for --duration, and check
every answer: an ECHO comes back unchanged, a PUT gets OK with a sequence
number above every one seen before, a GET returns the value this client last
put under the key (NOTFOUND for a key it never wrote). Keys carry a per-run
prefix, so earlier runs against the same disk do not matter.

A port forward accepts connections before the guest's server listens (and
then closes them), so the client retries for up to --wait, and counts the
server as reached only after one ECHO round trip.

It prints a progress line every --progress and a summary: requests, rate,
and round-trip latency (median, 99th percentile, maximum).

Exit status: 0 when every answer was right; 1 when the server could not be
reached or a request failed (connection closed, no answer within
--timeout); 2 on a wrong answer; 130 after Ctrl-C.`,
		Example: `  ftctl net serve --socket /tmp/net.sock --forward 127.0.0.1:7000=192.168.127.2:7000 &
  ftctl run --image out/image --net /tmp/net.sock --ip 192.168.127.2/24 --append ftvm.workload=kv &
  ftctl testbench kvclient --addr 127.0.0.1:7000 --duration 20s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if addr == "" {
				return errors.New("--addr HOST:PORT is required: where the kv server (or a forward to it) listens")
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kvclient: connecting to %s (retrying for up to %v)\n", addr, wait)
			start := time.Now()
			c, err := kvclient.Dial(ctx, addr, wait)
			if err != nil {
				if ctx.Err() != nil {
					return &exitError{code: 130, err: errors.New("stopped")}
				}
				return err
			}
			defer c.Close()
			fmt.Fprintf(out, "kvclient: the server answered an ECHO after %v; %v of mixed PUT/GET/ECHO, every answer checked\n",
				time.Since(start).Round(time.Millisecond), duration)
			res, err := kvclient.Run(ctx, c, kvclient.Options{Duration: duration, RequestTimeout: timeout, ProgressEvery: each, Progress: out})
			fmt.Fprintf(out, "kvclient: %v\n", res)
			var wrong *kvclient.WrongAnswer
			switch {
			case errors.As(err, &wrong):
				return &exitError{code: 2, err: fmt.Errorf("after %d correct answers: %w", res.Requests, err)}
			case ctx.Err() != nil:
				return &exitError{code: 130, err: errors.New("stopped")}
			case err != nil:
				return fmt.Errorf("after %d correct answers: %w", res.Requests, err)
			}
			fmt.Fprintf(out, "kvclient: all %d answers correct\n", res.Requests)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "the kv server's address, `HOST:PORT` (required)")
	f.DurationVar(&duration, "duration", 20*time.Second, "how long to send requests")
	f.DurationVar(&wait, "wait", 60*time.Second, "how long to retry the connection until the server answers")
	f.DurationVar(&timeout, "timeout", 60*time.Second, "fail a request that gets no answer within this long")
	f.DurationVar(&each, "progress", 5*time.Second, "print a progress line this often (0: never)")
	return cmd
}
