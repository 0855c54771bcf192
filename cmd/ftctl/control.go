package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ftvm/ftvm/failover/control"
)

// addControlFlag registers --control on ftctl run's flags; serveControl
// reads it back.
func addControlFlag(fs *pflag.FlagSet) {
	fs.String("control", "", "serve this VM's status on a unix socket at this path: GET /status (JSON), GET /metrics (Prometheus text); 'ftctl status' reads it. A VM alone with --control can be protected while it runs ('ftctl protect'), and so can a backup once live")
}

// controlSocket is --control being served: Set hands it the side's status
// once the side exists. Without --control both methods do nothing.
type controlSocket struct {
	pending *control.Pending
	server  *control.Server
}

// serveControl listens on --control (if given) before the VM is built, so
// a bad path costs nothing and a supervisor sees the side start.
func serveControl(cmd *cobra.Command, role string) (*controlSocket, error) {
	path, _ := cmd.Flags().GetString("control")
	if path == "" {
		return &controlSocket{}, nil
	}
	pending := control.NewPending(role)
	srv, err := control.Listen(path, pending, slog.Default())
	if err != nil {
		return nil, fmt.Errorf("--control: %w", err)
	}
	return &controlSocket{pending: pending, server: srv}, nil
}

func (c *controlSocket) Set(src control.Source) {
	if c.pending != nil {
		c.pending.Set(src)
	}
}

// SetSnapshotter lets 'ftctl snapshot' snapshot this side's VM.
func (c *controlSocket) SetSnapshotter(fn control.Snapshotter) {
	if c.pending != nil {
		c.pending.SetSnapshotter(fn)
	}
}

// SetProtector lets 'ftctl protect' protect this side's VM from now on.
func (c *controlSocket) SetProtector(fn control.Protector) {
	if c.pending != nil {
		c.pending.SetProtector(fn)
	}
}

func (c *controlSocket) Close() {
	if c.server != nil {
		c.server.Close()
	}
}
