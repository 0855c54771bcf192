package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raft"
	"github.com/ftvm/ftvm/images/workloads/raftkv"
)

const workloadRaftKV = "raftkv"

// raftDirName is where a replica keeps Raft's state in the data directory.
const raftDirName = "raft"

// raftkvWorkload runs one replica of the Raft key/value service (package
// raftkv) on the port of its own ftvm.peers entry, serving its peers and
// clients there, until the workload is signalled. Raft's term, vote, log
// and snapshot live on the data disk: a replica whose state did not
// survive a restart could vote twice in a term, so it refuses to run
// without a disk.
func raftkvWorkload(ctx context.Context, cfg Config, out io.Writer) error {
	rc := cfg.Raft
	if rc.ID < 0 || rc.ID >= len(rc.Peers) {
		return fmt.Errorf("raftkv: replica %d of %d peers", rc.ID, len(rc.Peers))
	}
	if cfg.DataDir == "" {
		return errors.New("raftkv: no data disk is mounted; Raft's state must survive a restart (give the VM a disk)")
	}
	addrs := make([]string, len(rc.Peers))
	for i, p := range rc.Peers {
		addrs[i] = p.String()
	}
	dir := filepath.Join(cfg.DataDir, raftDirName)
	// Opened once here only to report what a restart found; the node
	// opens its own.
	p, err := raft.OpenFilePersister(dir)
	if err != nil {
		return fmt.Errorf("raftkv: %w", err)
	}
	restored := p.Size()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(int(rc.Peers[rc.ID].Port())))
	if err != nil {
		return fmt.Errorf("raftkv: %w", err)
	}
	fmt.Fprintf(out, "ftvm-guest raftkv listening id=%d addr=%s peers=%d dir=%s restored_bytes=%d\n",
		rc.ID, ln.Addr(), len(addrs), dir, restored)
	node := raftkv.NodeConfig{
		ID: rc.ID, Addrs: addrs, Dir: dir, MaxRaftState: rc.SnapshotBytes,
		ElectionTimeout: rc.ElectionTimeout,
		// Elections and leadership changes are rare and are what a reader
		// of the console wants to see (Raft logs them at debug level).
		Logger: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if e := rc.ElectionTimeout; e > 0 {
		// The other timings scale with it: heartbeats as in Raft's
		// defaults (300 ms election, 50 ms heartbeat), and an RPC may take
		// half of it, since a machine slow enough to need a longer
		// election timeout is slower still on the network (in the nested
		// host, one guest-to-guest RPC on a fresh connection took 0.4 s).
		// A client's op waits for its commit about one election timeout,
		// at least the server's default second.
		node.HeartbeatInterval, node.RPCTimeout, node.OpTimeout = e/6, e/2, max(e, time.Second)
	}
	node.Started = func(s *raftkv.Server) { go printRaftStatus(ctx, out, rc.ID, s.Raft()) }
	return raftkv.ServeNode(ctx, node, ln)
}

// raftStatusEvery is how often a replica prints its Raft state.
const raftStatusEvery = 5 * time.Second

// printRaftStatus prints the replica's term and role every
// raftStatusEvery until ctx ends, so a host can tell from the console
// alone whether any election happened (a term only changes through one):
//
//	ftvm-guest raftkv status id=<N> term=<T> leader=<true|false>
func printRaftStatus(ctx context.Context, out io.Writer, id int, rf *raft.Raft) {
	t := time.NewTicker(raftStatusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		term, leader := rf.State()
		fmt.Fprintf(out, "ftvm-guest raftkv status id=%d term=%d leader=%t\n", id, term, leader)
	}
}
