package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/logchannel"
)

func runFtctl(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	cmd := newRootCommand()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestPairCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kv-pair")
	out, err := runFtctl(t, "pair", "certs", "--out", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "pair kv-pair") || !strings.Contains(out, filepath.Join(dir, "primary")) {
		t.Errorf("output does not name the pair and the directories:\n%s", out)
	}
	for sub, role := range map[string]logchannel.Role{"primary": logchannel.RoleSender, "backup": logchannel.RoleReceiver} {
		a, err := logchannel.LoadAuth(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		if a.Pair != "kv-pair" || a.Role != role {
			t.Errorf("%s: pair %q role %v", sub, a.Pair, a.Role)
		}
	}
	key := filepath.Join(dir, "backup", "key.pem")
	before, _ := os.ReadFile(key)
	if _, err := runFtctl(t, "pair", "certs", "--out", dir, "--name", "other"); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second run: %v", err)
	}
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Fatal("second run changed the backup's key")
	}
	if _, err := runFtctl(t, "pair", "certs"); err == nil || !strings.Contains(err.Error(), "--out DIR is required") {
		t.Fatalf("without --out: %v", err)
	}
	if _, err := runFtctl(t, "pair", "certs", "--out", t.TempDir(), "--name", "a/b"); err == nil || !strings.Contains(err.Error(), "pair name") {
		t.Fatalf("bad --name: %v", err)
	}
}

// logAuthCommand is a command with ftctl run's --log-auth that reports
// the log channel configuration logChannelConfig builds from it.
func logAuthCommand(role logchannel.Role, flag, addr string, got *logchannel.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:           "x",
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			*got, err = logChannelConfig(cmd, role, flag, addr, 3*time.Second)
			return err
		},
	}
	addLogAuthFlags(cmd.Flags())
	return cmd
}

func TestLogAuthFlag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "p")
	if _, err := runFtctl(t, "pair", "certs", "--out", dir); err != nil {
		t.Fatal(err)
	}
	run := func(role logchannel.Role, flag, addr string, args ...string) (logchannel.Config, error) {
		var got logchannel.Config
		cmd := logAuthCommand(role, flag, addr, &got)
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(context.Background())
		return got, err
	}

	// Each end with its own directory.
	for _, tc := range []struct {
		role       logchannel.Role
		flag, addr string
		sub        string
	}{{logchannel.RoleSender, "--peer", "10.0.0.2:7100", "primary"}, {logchannel.RoleReceiver, "--listen", "0.0.0.0:7100", "backup"}} {
		cfg, err := run(tc.role, tc.flag, tc.addr, "--log-auth", filepath.Join(dir, tc.sub))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Auth == nil || cfg.Auth.Role != tc.role || cfg.Auth.Pair != "p" || cfg.Timeout != 3*time.Second {
			t.Errorf("%s: config %+v", tc.sub, cfg)
		}
		// The other end's directory is refused.
		other := map[string]string{"primary": "backup", "backup": "primary"}[tc.sub]
		if _, err := run(tc.role, tc.flag, tc.addr, "--log-auth", filepath.Join(dir, other)); err == nil || !strings.Contains(err.Error(), "needs its own directory ("+tc.sub+"/") {
			t.Errorf("%s with the %s's directory: %v", tc.sub, other, err)
		}
	}

	// TCP without --log-auth says what to do; a unix socket needs nothing.
	_, err := run(logchannel.RoleSender, "--peer", "10.0.0.2:7100")
	if err == nil || !strings.Contains(err.Error(), "--peer 10.0.0.2:7100 is a TCP address") || !strings.Contains(err.Error(), "ftctl pair certs --out DIR") || !strings.Contains(err.Error(), "--log-auth") {
		t.Errorf("TCP --peer without --log-auth: %v", err)
	}
	_, err = run(logchannel.RoleReceiver, "--listen", "tcp:0.0.0.0:7100")
	if err == nil || !strings.Contains(err.Error(), "DIR/backup to this host") {
		t.Errorf("TCP --listen without --log-auth: %v", err)
	}
	if cfg, err := run(logchannel.RoleReceiver, "--listen", "unix:/tmp/ft.sock"); err != nil || cfg.Auth != nil {
		t.Errorf("unix --listen without --log-auth: %+v %v", cfg, err)
	}

	// A bad directory stops ftctl when the flag is parsed.
	if _, err := run(logchannel.RoleSender, "--peer", "h:1", "--log-auth", filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--log-auth") || !strings.Contains(err.Error(), "ca.pem") {
		t.Errorf("missing --log-auth directory: %v", err)
	}
}
