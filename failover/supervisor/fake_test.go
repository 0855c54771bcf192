package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/failover/control"
)

// The test binary doubles as a fake ftctl (FAKE_FTCTL=1): 'net serve'
// and 'storage serve' listen on their socket; 'run --role backup' serves a control socket in
// phase replaying, listens on the log channel and goes "live" when the
// primary's connection breaks without a clean "bye"; 'run --role
// primary' connects, serves phase protected, and says "bye" on SIGTERM;
// 'start' supervises such a pair (Pair.Run).
// Each side stays until SIGTERM (or SIGKILL).
func TestMain(m *testing.M) {
	if os.Getenv("FAKE_FTCTL") == "1" {
		if err := fakeFtctl(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "fake ftctl:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func fakeFtctl(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "fake ftctl %q\n", args)
	if len(args) > 1 && (args[0] == "net" || args[0] == "storage") && args[1] == "serve" {
		ln, err := net.Listen("unix", flagValue(args, "--socket"))
		if err != nil {
			return err
		}
		defer ln.Close()
		<-ctx.Done()
		return nil
	}
	if len(args) > 0 && args[0] == "start" { // the supervisor
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		p := Pair{Name: "kv", Dir: RunDir(flagValue(args, "--run-dir")), Ftctl: exe,
			Machine: []string{"--image", flagValue(args, "--image")}, Timeout: 20 * time.Second,
			NoReprotect: slices.Contains(args, "--no-reprotect")}
		return p.Run(ctx, nil)
	}
	if len(args) == 0 || args[0] != "run" {
		return fmt.Errorf("unexpected arguments %q", args)
	}
	if flagValue(args, "--image") == "fail" {
		return errors.New("image fail: no such image")
	}
	role := flagValue(args, "--role")
	var st atomic.Pointer[control.Status]
	st.Store(&control.Status{Role: role, PID: os.Getpid(), Phase: "starting"})
	srv, err := control.Listen(flagValue(args, "--control"), control.SourceFunc(func() control.Status { return *st.Load() }), nil)
	if err != nil {
		return err
	}
	defer srv.Close()
	switch role {
	case Backup:
		ln, err := net.Listen("unix", strings.TrimPrefix(flagValue(args, "--listen"), "unix:"))
		if err != nil {
			return err
		}
		defer ln.Close()
		st.Store(&control.Status{Role: role, PID: os.Getpid(), Phase: "replaying", State: "replaying", Generation: 1})
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			if string(b) == "bye" {
				return
			}
			failover := &control.Failover{PrimaryLost: time.Now(), Why: "EOF", DrainedMS: 1, ClaimedMS: 2, LiveMS: 3, Generation: 2}
			st.Store(&control.Status{Role: role, PID: os.Getpid(), Phase: "live", State: "live: won generation 2", Generation: 2, Failover: failover})
			next := strings.TrimPrefix(flagValue(args, "--protect-to"), "unix:")
			if next == "" {
				return
			}
			// Re-protection: the survivor connects to the next backup
			// (asking until it listens) and is a primary from then on.
			for ctx.Err() == nil {
				if c, err := net.Dial("unix", next); err == nil {
					context.AfterFunc(ctx, func() { c.Write([]byte("bye")); c.Close() })
					st.Store(&control.Status{Role: Primary, PID: os.Getpid(), Phase: "protected", State: "replicating", Generation: 2,
						Reprotected: &control.Reprotection{Rounds: 3, Pages: 100, PauseMS: 4, TotalMS: 50}})
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	case Primary:
		peer := strings.TrimPrefix(flagValue(args, "--peer"), "unix:")
		c, err := net.Dial("unix", peer)
		if err != nil {
			return err
		}
		var mu sync.Mutex
		defer func() { mu.Lock(); c.Write([]byte("bye")); c.Close(); mu.Unlock() }()
		st.Store(&control.Status{Role: role, PID: os.Getpid(), Phase: "protected", State: "replicating", Generation: 1, HeldOutputs: 2})
		// A lost backup (its end of the connection closes): unprotected,
		// and with --protect-again a new backup at --peer, asked for
		// until one listens.
		go func() {
			for again := 1; ; again++ {
				mu.Lock()
				cur := c
				mu.Unlock()
				io.Copy(io.Discard, cur)
				if ctx.Err() != nil {
					return
				}
				st.Store(&control.Status{Role: role, PID: os.Getpid(), Phase: "unprotected", State: "unprotected: the backup was lost", Generation: 2})
				if !slices.Contains(args, "--protect-again") {
					return
				}
				for {
					if ctx.Err() != nil {
						return
					}
					if nc, err := net.Dial("unix", peer); err == nil {
						mu.Lock()
						c = nc
						mu.Unlock()
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				st.Store(&control.Status{Role: role, PID: os.Getpid(), Phase: "protected", State: "replicating", Generation: 2, ProtectedAgain: again})
			}
		}()
	}
	<-ctx.Done()
	return nil
}
