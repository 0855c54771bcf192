package raftkv

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raft"
)

// NodeConfig is one replica as a guest runs it: one TCP port for both
// its peers and its clients, a data directory for Raft's state.
type NodeConfig struct {
	ID           int
	Addrs        []string // every replica's address, indexed by ID
	Listen       string   // address to listen on ("" = Addrs[ID])
	Dir          string
	MaxRaftState int
	// ElectionTimeout and HeartbeatInterval override Raft's defaults
	// (300 ms, 50 ms). A replica whose VM may pause, as during an ftvm
	// failover, needs an election timeout above the pause, or its
	// followers elect a new leader meanwhile.
	ElectionTimeout   time.Duration
	HeartbeatInterval time.Duration
	// RPCTimeout overrides Raft's bound on one peer RPC (100 ms), and
	// OpTimeout the server's wait for a client's op to commit (1 s):
	// replicas on slow machines (guests sharing an emulated CPU, where a
	// vote's fsync alone can take longer) need both longer, or no RPC
	// ever completes in time.
	RPCTimeout time.Duration
	OpTimeout  time.Duration
	Logger     *slog.Logger
	// Started, if set, is called once the replica's server runs, so the
	// caller can report its Raft state (a guest prints its term for a
	// host to read).
	Started func(*Server)
}

// RunNode runs a replica until ctx ends: Raft peer, state machine and the
// TCP server answering both peers and clerks.
func RunNode(ctx context.Context, cfg NodeConfig) error {
	if cfg.ID < 0 || cfg.ID >= len(cfg.Addrs) {
		return fmt.Errorf("run kv node: id %d of %d addresses", cfg.ID, len(cfg.Addrs))
	}
	listen := cfg.Listen
	if listen == "" {
		listen = cfg.Addrs[cfg.ID]
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("run kv node %d: %w", cfg.ID, err)
	}
	return ServeNode(ctx, cfg, ln)
}

// ServeNode is RunNode on an open listener.
func ServeNode(ctx context.Context, cfg NodeConfig, ln net.Listener) error {
	p, err := raft.OpenFilePersister(cfg.Dir)
	if err != nil {
		ln.Close()
		return fmt.Errorf("run kv node %d: %w", cfg.ID, err)
	}
	tr := raft.NewTCPTransport(cfg.Addrs)
	defer tr.Close()
	s, err := StartServer(ctx, Config{
		Raft: raft.Config{ID: cfg.ID, Peers: len(cfg.Addrs), Transport: tr, Persister: p, Logger: cfg.Logger,
			ElectionTimeout: cfg.ElectionTimeout, HeartbeatInterval: cfg.HeartbeatInterval, RPCTimeout: cfg.RPCTimeout},
		MaxRaftState: cfg.MaxRaftState,
		OpTimeout:    cfg.OpTimeout,
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("run kv node %d: %w", cfg.ID, err)
	}
	defer s.Kill()
	if cfg.Started != nil {
		cfg.Started(s)
	}
	if err := raft.ServeTCP(ctx, ln, s); err != nil {
		return fmt.Errorf("run kv node %d: %w", cfg.ID, err)
	}
	return nil
}
