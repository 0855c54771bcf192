package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ftvm/ftvm/storage/arbiter"
	"github.com/ftvm/ftvm/storage/server"
)

// addArbiterFlags registers --arbiter and --pair on ftctl run's flags; read
// them back with arbiterFromFlags.
func addArbiterFlags(fs *pflag.FlagSet) {
	fs.String("storage-server", "", "the unix socket of an 'ftctl storage serve' that owns the disks: they are opened through it, every write carries this side's generation, and the server refuses an old generation's writes (fencing); it is also the arbiter unless --arbiter says otherwise; needs --pair")
	fs.String("arbiter", "", "primary: where the pair's arbiter record lives, a directory on storage both hosts share, or etcd:HOST:PORT[,HOST:PORT...]; when the backup is lost the primary claims the record and runs on alone only if it wins")
	fs.String("pair", "", "with --arbiter: the pair's name (its record); letters, digits, '-', '_' and '.'")
}

// arbiterFromFlags opens the arbiter --arbiter names (nil without one) and
// returns it with the pair name and a function that releases it.
func arbiterFromFlags(cmd *cobra.Command) (arbiter.Arbiter, string, func(), error) {
	spec, _ := cmd.Flags().GetString("arbiter")
	pair, _ := cmd.Flags().GetString("pair")
	srv, _ := cmd.Flags().GetString("storage-server")
	if spec == "" && srv != "" {
		if err := arbiter.ValidatePair(pair); err != nil {
			return nil, "", nil, fmt.Errorf("--storage-server needs --pair (the pair's name, e.g. --pair kv): %w", err)
		}
		c, err := server.Dial(cmd.Context(), "unix", strings.TrimPrefix(srv, "unix:"))
		if err != nil {
			return nil, "", nil, fmt.Errorf("--storage-server %s (is 'ftctl storage serve' running?): %w", srv, err)
		}
		return c, pair, func() { c.Close() }, nil
	}
	if spec == "" {
		if pair != "" {
			return nil, "", nil, errors.New("--pair names the record at an --arbiter; give --arbiter too")
		}
		return nil, "", func() {}, nil
	}
	if err := arbiter.ValidatePair(pair); err != nil {
		return nil, "", nil, fmt.Errorf("--pair %q: %w (give the pair a name, e.g. --pair kv)", pair, err)
	}
	if rest, ok := strings.CutPrefix(spec, "etcd:"); ok {
		endpoints := strings.Split(rest, ",")
		for _, e := range endpoints {
			if e == "" || !strings.Contains(e, ":") {
				return nil, "", nil, fmt.Errorf("--arbiter %s: want etcd:HOST:PORT[,HOST:PORT...]", spec)
			}
		}
		e, err := arbiter.NewEtcd(arbiter.EtcdConfig{Endpoints: endpoints})
		if err != nil {
			return nil, "", nil, fmt.Errorf("--arbiter: %w", err)
		}
		return e, pair, func() { e.Close() }, nil
	}
	d, err := arbiter.OpenDir(spec)
	if err != nil {
		return nil, "", nil, fmt.Errorf("--arbiter: %w", err)
	}
	return d, pair, func() {}, nil
}
