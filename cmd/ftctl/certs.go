package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ftvm/ftvm/logchannel"
)

func newPairCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pair",
		Short: "Set up a fault-tolerant pair across two hosts",
	}
	cmd.AddCommand(newPairCertsCommand())
	return cmd
}

func newPairCertsCommand() *cobra.Command {
	var (
		out, name string
		days      int
	)
	cmd := &cobra.Command{
		Use:   "certs --out DIR [--name NAME]",
		Short: "Create a pair's CA and the certificates that authenticate its log channel",
		Long: `Create the credentials of a primary/backup pair whose log channel runs over
TCP between two hosts: a CA for this pair alone, and for each end a certificate
and key (ECDSA P-256) that name the pair and the end's role. The channel runs
TLS 1.3 and each end checks that the other's certificate comes from the pair's
CA and has the other role: a backup accepts only its primary (nobody else can
feed it entries), a primary only its backup (nobody else can ack its outputs).

It writes
  DIR/primary/{ca.pem,cert.pem,key.pem}   for the primary's host
  DIR/backup/{ca.pem,cert.pem,key.pem}    for the backup's host
with keys 0600 and directories 0700, and refuses to overwrite either
directory. The CA's key is not kept, so nothing more can ever be issued for
the pair; to replace the certificates, create a new set and install both.

Copy each directory to its host and keep it private (scp -p keeps the modes;
ftctl refuses a key.pem that others can read), then delete DIR here:
  scp -rp DIR/backup  backup-host:/etc/ftvm/log-auth
  scp -rp DIR/primary primary-host:/etc/ftvm/log-auth
and give each end its directory with --log-auth:
  backup-host$  ftctl run ... --role backup  --listen 0.0.0.0:7100 --log-auth /etc/ftvm/log-auth
  primary-host$ ftctl run ... --role primary --peer backup-host:7100 --log-auth /etc/ftvm/log-auth

A pair on one host can use a unix socket (unix:/path.sock), which needs no
credentials: the socket file's permissions guard it.`,
		Example: `  ftctl pair certs --out ./kv-pair
  ftctl pair certs --out /tmp/pair --name db-east --days 365`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("--out DIR is required: where to write DIR/primary and DIR/backup")
			}
			if name == "" {
				if name = filepath.Base(filepath.Clean(out)); !logchannel.ValidPairName(name) {
					name = "pair"
				}
			}
			if days <= 0 {
				return fmt.Errorf("--days %d: want a positive number of days", days)
			}
			pc, err := logchannel.NewPairCredentials(name, time.Duration(days)*24*time.Hour)
			if err != nil {
				return fmt.Errorf("--name: %w", err)
			}
			if err := logchannel.WritePairCredentials(out, pc); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "created the log channel credentials of pair %s, valid for %d days:\n", name, days)
			fmt.Fprintf(w, "  %s  for the primary's host (--log-auth on --role primary)\n", filepath.Join(out, logchannel.PrimaryDir))
			fmt.Fprintf(w, "  %s  for the backup's host (--log-auth on --role backup)\n", filepath.Join(out, logchannel.BackupDir))
			fmt.Fprintln(w, "copy each to its host with scp -rp, then delete them here ('ftctl pair certs --help' shows how)")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "directory to write primary/ and backup/ into (created if missing)")
	f.StringVar(&name, "name", "", "the pair's name, written into its certificates (default: the base name of --out)")
	f.IntVar(&days, "days", 3*365, "how many days the certificates are valid")
	return cmd
}

// logAuthFlag is ftctl run's --log-auth. The directory is loaded when the
// flag is parsed, so a missing file or a key others can read stops ftctl
// before anything starts.
type logAuthFlag struct {
	dir  string
	auth *logchannel.Auth
}

func (f *logAuthFlag) String() string { return f.dir }
func (f *logAuthFlag) Type() string   { return "DIR" }

func (f *logAuthFlag) Set(dir string) error {
	a, err := logchannel.LoadAuth(dir)
	if err != nil {
		return err
	}
	f.dir, f.auth = dir, a
	return nil
}

const logAuthFlagName = "log-auth"

// addLogAuthFlags registers --log-auth on ftctl run's flags; read it back
// with logChannelConfig.
func addLogAuthFlags(fs *pflag.FlagSet) {
	fs.Var(&logAuthFlag{}, logAuthFlagName, "primary/backup: directory with this end's log channel credentials (ca.pem, cert.pem, key.pem from 'ftctl pair certs'); required for a host:port --peer or --listen")
}

// logChannelConfig is the log channel configuration of the pair's end
// with role, reached at addr (given as flag, --peer or --listen): it
// carries --log-auth, which must be that role's, and which a TCP address
// requires.
func logChannelConfig(cmd *cobra.Command, role logchannel.Role, flag, addr string, silence time.Duration) (logchannel.Config, error) {
	cfg := logchannel.Config{Timeout: silence}
	var la *logAuthFlag
	if fl := cmd.Flags().Lookup(logAuthFlagName); fl != nil {
		la, _ = fl.Value.(*logAuthFlag)
	}
	want, other := "primary", "backup"
	if role == logchannel.RoleReceiver {
		want, other = other, want
	}
	if la == nil || la.auth == nil {
		if isUnixLogAddr(addr) {
			return cfg, nil
		}
		return cfg, fmt.Errorf("%s %s is a TCP address, and a log channel between hosts must be authenticated: "+
			"run 'ftctl pair certs --out DIR' once, copy DIR/%s to this host and DIR/%s to the %s's, and give each end --log-auth with its directory "+
			"('ftctl pair certs --help' shows how); a pair on one host can use %s unix:/path.sock instead",
			flag, addr, want, other, other, flag)
	}
	if la.auth.Role != role {
		return cfg, fmt.Errorf("--log-auth %s holds the credentials of pair %s's other end; --role %s needs its own directory (%s/ of 'ftctl pair certs')", la.dir, la.auth.Pair, want, want)
	}
	cfg.Auth = la.auth
	return cfg, nil
}

// isUnixLogAddr says whether a --peer or --listen address is a unix
// socket, by the syntax package replication parses it with.
func isUnixLogAddr(addr string) bool {
	return strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, ".")
}
