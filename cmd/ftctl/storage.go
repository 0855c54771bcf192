package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/arbiter"
	storageserver "github.com/ftvm/ftvm/storage/server"
)

func newStorageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "storage",
		Short: "Run the fencing storage server that a pair's VMMs reach their disks through",
		Long: `The storage server owns a storage directory's disk files and the pairs'
arbiter records. VMMs read and write their disks through it, every write
tagged with the generation its writer holds; after a failover the side that
won the claim holds a newer generation and the server refuses the old
primary's writes, even ones it had released before it was paused. It runs in
its own long-lived process, like the network switch, so that it outlives the
VMMs of the pair.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newStorageServeCommand(), newStorageRecordCommand())
	return cmd
}

func newStorageServeCommand() *cobra.Command {
	var (
		dir, socket, tcp, etcdPrefix string
		etcd                         []string
		timeout                      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve --socket PATH [--dir DIR] [--etcd URL ...]",
		Short: "Serve disks and arbiter records in the foreground until Ctrl-C",
		Long: `Serve the disks of storage directory DIR (--dir, else $FTVM_STORAGE, else
~/.local/share/ftvm/storage) on a unix socket, and optionally on TCP.

The pairs' arbiter records live in DIR/arbiter (one file per generation; on
NFS mount hard with lookupcache=none,noac) unless --etcd names an etcd
cluster, whose keys under --etcd-prefix then hold them. Claims made through
this server are ordered against the pair's writes: once a claim returns, no
write of an older generation lands.

Stop with Ctrl-C (or SIGTERM). A socket file left by a server that died is
replaced; a socket a running server answers on is an error.`,
		Example: `  ftctl storage serve --socket /run/ftvm/storage.sock
  ftctl storage serve --dir /srv/ftvm --socket /run/ftvm/storage.sock --etcd http://10.0.0.5:2379`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if socket == "" {
				return fmt.Errorf("--socket is required: the unix socket path VMMs reach their disks through, e.g. /run/ftvm/storage.sock")
			}
			store, err := openStore(dir)
			if err != nil {
				return err
			}
			var arb arbiter.Arbiter
			if len(etcd) > 0 {
				e, err := arbiter.NewEtcd(arbiter.EtcdConfig{Endpoints: etcd, Prefix: etcdPrefix, RequestTimeout: timeout})
				if err != nil {
					return err
				}
				defer e.Close()
				arb = e
			} else if arb, err = arbiter.OpenDir(filepath.Join(store.Dir(), arbiter.DirName)); err != nil {
				return err
			}
			srv, err := storageserver.New(storageserver.Config{Store: store, Arbiter: arb, ArbiterTimeout: timeout, Logger: slog.Default()})
			if err != nil {
				return err
			}
			defer srv.Close()
			if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
				return fmt.Errorf("socket directory: %w", err)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			errs := make(chan error, 2)
			go func() { errs <- srv.ServeUnix(ctx, socket) }()
			serving := 1
			if tcp != "" {
				ln, err := net.Listen("tcp", tcp)
				if err != nil {
					cancel()
					return errors.Join(fmt.Errorf("listen on %s: %w", tcp, err), <-errs)
				}
				serving++
				go func() { errs <- srv.Serve(ctx, ln) }()
			}
			var all []error
			for ; serving > 0; serving-- {
				if err := <-errs; err != nil {
					all = append(all, err)
					cancel() // one listener failing stops the other
				}
			}
			slog.Info("storage server: stopped", "dir", store.Dir())
			return errors.Join(all...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "storage `DIR` holding the disks (default $FTVM_STORAGE or ~/.local/share/ftvm/storage)")
	f.StringVar(&socket, "socket", "", "unix socket `PATH` to serve on (required)")
	f.StringVar(&tcp, "tcp", "", "also serve on TCP `ADDR` (host:port; no authentication: use a private network)")
	f.StringSliceVar(&etcd, "etcd", nil, "keep arbiter records in etcd at these client `URLs` instead of DIR/arbiter")
	f.StringVar(&etcdPrefix, "etcd-prefix", arbiter.DefaultEtcdPrefix, "etcd key `PREFIX` of the records")
	f.DurationVar(&timeout, "arbiter-timeout", 5*time.Second, "how long one claim or record read may wait for the arbiter")
	return cmd
}

func newStorageRecordCommand() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "record PAIR --socket PATH",
		Short: "Print a pair's arbiter record (generation and owner) as the storage server has it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if socket == "" {
				return fmt.Errorf("--socket is required: the storage server's unix socket")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			c, err := storageserver.Dial(ctx, "unix", socket)
			if err != nil {
				return err
			}
			defer c.Close()
			rec, err := c.Read(ctx, args[0])
			if err != nil {
				return err
			}
			claimed := "-"
			if !rec.Claimed.IsZero() {
				claimed = rec.Claimed.Format(time.RFC3339Nano)
			}
			owner := rec.Owner
			if owner == "" {
				owner = "-"
			}
			if rec.Damaged != "" {
				owner = "(unreadable: " + rec.Damaged + ")"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "pair:        %s\ngeneration:  %d\nowner:       %s\nclaimed:     %s\n",
				rec.Pair, rec.Generation, owner, claimed)
			return err
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "the storage server's unix socket `PATH` (required)")
	return cmd
}

// openStore opens dir, or the default storage directory if dir is empty.
func openStore(dir string) (*storage.Store, error) {
	if dir == "" {
		var err error
		if dir, err = storage.DefaultDir(); err != nil {
			return nil, err
		}
	}
	return storage.Open(dir)
}
