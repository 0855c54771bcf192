package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/network"
)

func newNetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Run the virtual network that VMs attach to",
		Long: `The virtual network is an Ethernet switch with a gateway that gives guests
DHCP, DNS, outbound connections (NAT through this host's sockets) and port
forwards from host addresses to guest services. It runs in its own long-lived
process so that it outlives the VMMs attached to it: when a primary dies and
its backup goes live, the backup attaches to the same network and the guest
keeps its address and its forwarded ports.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newNetServeCommand())
	return cmd
}

func newNetServeCommand() *cobra.Command {
	var (
		socket, subnet, hostIP string
		forwards, leases       []string
		mtu                    int
	)
	cmd := &cobra.Command{
		Use:   "serve --socket PATH [--forward HOST=GUEST ...] [--lease MAC=IP ...]",
		Short: "Run the virtual network switch in the foreground until Ctrl-C",
		Long: `Run the embedded gvisor-tap-vsock switch (no gvproxy binary needed) and listen
for VMMs on a unix socket. Each connection is one switch port carrying
Ethernet frames, each preceded by its length as 4 bytes big-endian (QEMU's
stream netdev protocol). A VMM may disconnect and attach again at any time.

The network (defaults): subnet 192.168.127.0/24, gateway, DHCP and DNS server
at .1. DHCP hands out addresses from .2 upwards; --lease pins a guest MAC to an
address, so a VM with a fixed MAC always gets the same IP. The gateway's DNS
answers gateway.ftvm.internal itself and resolves other names with this host's
resolver.

--forward HOST=GUEST exposes a guest TCP service on a host address. Either side
may be IP:PORT or just PORT: a bare host port listens on 127.0.0.1 only, and a
bare guest port means the first guest address (.2 on the default subnet).

Stop with Ctrl-C (or SIGTERM): forwards are closed, attached VMMs are
disconnected and the socket file is removed. A socket file left by a switch
that died is replaced; a socket a running switch is serving is an error.`,
		Example: `  ftctl net serve --socket /run/ftvm/net.sock
  ftctl net serve --socket /run/ftvm/net.sock --forward 127.0.0.1:8080=192.168.127.2:80
  ftctl net serve --socket net.sock --forward 8080=80 --forward 2222=22 \
      --lease 5a:94:ef:e4:0c:ee=192.168.127.2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if socket == "" {
				return fmt.Errorf("--socket is required: the unix socket path VMMs attach to, e.g. /run/ftvm/net.sock")
			}
			cfg := network.SwitchConfig{Subnet: subnet, HostIP: hostIP, MTU: mtu, Logger: slog.Default()}
			for _, f := range forwards {
				fw, err := network.ParseForward(f)
				if err != nil {
					return fmt.Errorf("--forward: %w", err)
				}
				cfg.Forwards = append(cfg.Forwards, fw)
			}
			cfg.StaticLeases = map[string]string{}
			for _, l := range leases {
				mac, ip, ok := strings.Cut(l, "=")
				if !ok || mac == "" || ip == "" {
					return fmt.Errorf("--lease %q: want MAC=IP, e.g. 5a:94:ef:e4:0c:ee=192.168.127.2", l)
				}
				cfg.StaticLeases[strings.TrimSpace(mac)] = strings.TrimSpace(ip)
			}
			routeLibraryLogs(slog.Default())
			sw, err := network.NewSwitch(cfg)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
				return fmt.Errorf("socket directory: %w", err)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			err = sw.Serve(ctx, socket)
			sent, received := sw.Stats()
			slog.Info("network: switch stopped", "bytes_to_vms", sent, "bytes_from_vms", received)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "unix socket `PATH` VMMs attach to (required)")
	f.StringArrayVar(&forwards, "forward", nil, "forward a host address to a guest TCP service, `HOST=GUEST` (IP:PORT or PORT each side; repeatable)")
	f.StringArrayVar(&leases, "lease", nil, "DHCP static lease `MAC=IP` (repeatable)")
	f.StringVar(&subnet, "subnet", network.DefaultSubnet, "IPv4 `CIDR` of the virtual network; the gateway is its first address")
	f.StringVar(&hostIP, "host-ip", "", "address in the subnet through which guests reach this host's 127.0.0.1 (off unless given)")
	f.IntVar(&mtu, "mtu", network.DefaultMTU, "MTU of the virtual network")
	return cmd
}

// routeLibraryLogs sends gvisor-tap-vsock's logrus output through slog, so
// the switch logs in one format. logrus is process-global, which is why
// this lives in the CLI and not in the network package.
func routeLibraryLogs(log *slog.Logger) {
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.DebugLevel) // let slog's handler decide what to show
	logrus.AddHook(logrusToSlog{log: log.With("lib", "gvisor-tap-vsock")})
}

type logrusToSlog struct{ log *slog.Logger }

func (h logrusToSlog) Levels() []logrus.Level { return logrus.AllLevels }

func (h logrusToSlog) Fire(e *logrus.Entry) error {
	level := slog.LevelDebug
	switch {
	case strings.Contains(e.Message, "disconnecting"):
		// Every VMM detach is reported by the library as an error; the
		// switch already logs the detach (with this reason) at info.
	case e.Level <= logrus.ErrorLevel:
		level = slog.LevelError
	case e.Level == logrus.WarnLevel:
		level = slog.LevelWarn
	}
	attrs := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, k, v)
	}
	h.log.Log(context.Background(), level, e.Message, attrs...)
	return nil
}
