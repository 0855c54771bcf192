package raft

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/ftvm/ftvm/images/workloads/raft/rafttest"
)

func sampleMessages() []message {
	return []message{
		&RequestVoteArgs{Term: 7, Candidate: 2, LastLogIndex: 1 << 40, LastLogTerm: 6},
		&RequestVoteArgs{Term: 8, Candidate: 1, LastLogIndex: 3, LastLogTerm: 6, PreVote: true},
		&RequestVoteReply{Term: 7, Granted: true},
		&AppendEntriesArgs{Term: 3, Leader: 1, PrevLogIndex: 9, PrevLogTerm: 2, LeaderCommit: 8,
			Entries: []Entry{{Term: 3, Command: []byte("put x 1")}, {Term: 3, Command: []byte{}}}},
		&AppendEntriesArgs{Term: 1},
		&AppendEntriesReply{Term: 4, ConflictTerm: 2, ConflictIndex: 5, LogLength: 11},
		&AppendEntriesReply{Term: 4, Success: true},
		&InstallSnapshotArgs{Term: 9, Leader: 0, LastIncludedIndex: 100, LastIncludedTerm: 8, Data: []byte("state")},
		&InstallSnapshotReply{Term: 9},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b := encodeMessage(m)
		got, err := decodeMessage(b)
		if err != nil {
			t.Fatalf("%v: %v", m.kind(), err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(m)) {
			t.Fatalf("%v: got %+v, want %+v", m.kind(), got, m)
		}
		// Every strict prefix is rejected, not misread.
		for i := range len(b) {
			if _, err := decodeMessage(b[:i]); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%v: prefix of %d bytes: %v", m.kind(), i, err)
			}
		}
		if _, err := decodeMessage(append(b, 0)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%v: trailing byte accepted", m.kind())
		}
	}
	if err := decodeAs(encodeMessage(&RequestVoteReply{}), new(AppendEntriesReply)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("reply of the wrong kind: %v", err)
	}
}

// normalize makes empty and nil commands compare equal.
func normalize(m message) message {
	if a, ok := m.(*AppendEntriesArgs); ok {
		c := *a
		c.Entries = nil
		for _, e := range a.Entries {
			c.Entries = append(c.Entries, Entry{Term: e.Term, Command: append([]byte{}, e.Command...)})
		}
		return &c
	}
	return m
}

func FuzzDecodeMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(encodeMessage(m))
	}
	f.Add([]byte{})
	f.Add([]byte{byte(KindAppendEntries), 1, 2, 4, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// What decodes re-encodes to a message that decodes the same.
		m2, err := decodeMessage(encodeMessage(m))
		if err != nil || !reflect.DeepEqual(normalize(m), normalize(m2)) {
			t.Fatalf("re-encoding %+v: %+v, %v", m, m2, err)
		}
	})
}

func TestPersistentStateRoundTrip(t *testing.T) {
	s := persistentState{Term: 5, VotedFor: -1, SnapshotIndex: 40, SnapshotTerm: 3,
		Entries: []Entry{{Term: 4, Command: []byte("a")}, {Term: 5, Command: []byte("bb")}}}
	got, err := decodePersistentState(s.encode())
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("got %+v, %v", got, err)
	}
	b := s.encode()
	b[0] = 9
	if _, err := decodePersistentState(b); !errors.Is(err, ErrMalformed) {
		t.Fatalf("wrong version: %v", err)
	}
}

func FuzzDecodePersistentState(f *testing.F) {
	f.Add((&persistentState{Term: 1, VotedFor: 2, Entries: []Entry{{Term: 1, Command: []byte("x")}}}).encode())
	f.Add((&persistentState{VotedFor: -1}).encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodePersistentState(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if s.VotedFor < -1 {
			t.Fatalf("voted for %d", s.VotedFor)
		}
		if _, err := decodePersistentState(s.encode()); err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
	})
}

func TestStateFile(t *testing.T) {
	b := encodeStateFile([]byte("state"), []byte("snapshot"))
	st, sn, err := decodeStateFile(b)
	if err != nil || string(st) != "state" || string(sn) != "snapshot" {
		t.Fatalf("%q %q %v", st, sn, err)
	}
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		if _, _, err := decodeStateFile(c); !errors.Is(err, ErrMalformed) {
			t.Fatalf("flipped byte %d accepted: %v", i, err)
		}
	}
	if _, _, err := decodeStateFile(b[:len(b)-1]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short file accepted: %v", err)
	}
}

func FuzzDecodeStateFile(f *testing.F) {
	f.Add(encodeStateFile([]byte("s"), []byte("snap")))
	f.Add(encodeStateFile(nil, nil))
	f.Add([]byte(fileMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, sn, err := decodeStateFile(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if !bytes.Equal(encodeStateFile(st, sn), b) {
			t.Fatal("a decoded file re-encodes differently")
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	writeFrame(&buf, []byte("hello"))
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := readFrame(bytes.NewReader(b))
		if err == nil && len(got)+4 > len(b) {
			t.Fatalf("frame of %d bytes from %d", len(got), len(b))
		}
	})
}

func TestFilePersister(t *testing.T) {
	dir := t.TempDir()
	p, err := OpenFilePersister(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, sn, err := p.Load(); st != nil || sn != nil || err != nil {
		t.Fatalf("fresh persister: %q %q %v", st, sn, err)
	}
	if err := p.Save([]byte("one"), []byte("snap1")); err != nil {
		t.Fatal(err)
	}
	if err := p.Save([]byte("two!"), []byte("snap2")); err != nil {
		t.Fatal(err)
	}
	// A crash during a Save leaves a temporary file; reopening ignores
	// and removes it.
	if err := os.WriteFile(filepath.Join(dir, stateFileTemp), []byte("torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	p2, err := OpenFilePersister(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, sn, err := p2.Load()
	if err != nil || string(st) != "two!" || string(sn) != "snap2" || p2.Size() != 4 {
		t.Fatalf("reopened: %q %q size %d %v", st, sn, p2.Size(), err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFileTemp)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
	// Corruption is reported, not treated as an empty state.
	path := filepath.Join(dir, stateFile)
	b, _ := os.ReadFile(path)
	b[len(fileMagic)+9] ^= 1
	os.WriteFile(path, b, 0o644)
	if _, err := OpenFilePersister(dir); !errors.Is(err, ErrMalformed) {
		t.Fatalf("corrupt state file: %v", err)
	}
}

// TestTCPCluster runs three peers over loopback TCP with file
// persisters, restarts one from its directory, and checks it catches up.
func TestTCPCluster(t *testing.T) {
	const n = 3
	lns, addrs, dirs := rafttest.LoopbackNodes(t, n)
	type node struct {
		rf     *Raft
		cancel context.CancelFunc
		served chan error
		got    chan ApplyMsg
	}
	startNode := func(i int, ln net.Listener) *node {
		p, err := OpenFilePersister(dirs[i])
		if err != nil {
			t.Fatal(err)
		}
		tr := NewTCPTransport(addrs)
		t.Cleanup(func() { tr.Close() })
		ctx, cancel := context.WithCancel(context.Background())
		rf, err := New(ctx, Config{ID: i, Peers: n, Transport: tr, Persister: p,
			ElectionTimeout: testElection, HeartbeatInterval: testHeartbeat, RPCTimeout: testRPC})
		if err != nil {
			t.Fatal(err)
		}
		nd := &node{rf: rf, cancel: cancel, served: make(chan error, 1), got: make(chan ApplyMsg, 100)}
		go func() { nd.served <- ServeTCP(ctx, ln, rf) }()
		go func() {
			for m := range rf.Apply() {
				nd.got <- m
			}
			close(nd.got)
		}()
		return nd
	}
	stopNode := func(nd *node) {
		nd.cancel()
		nd.rf.Kill()
		if err := <-nd.served; err != nil {
			t.Errorf("serve: %v", err)
		}
		for range nd.got {
		}
	}
	nodes := make([]*node, n)
	for i := range n {
		nodes[i] = startNode(i, lns[i].View())
	}
	// propose submits cmd until every node applied it (a retry may commit
	// it twice, which is fine here: agreement is checked elsewhere).
	propose := func(cmd string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		applied := make([]bool, n)
		for time.Now().Before(deadline) {
			for _, nd := range nodes {
				nd.rf.Start([]byte(cmd))
			}
			wait := time.After(time.Second)
		collect:
			for {
				done := true
				for i, nd := range nodes {
					select {
					case m := <-nd.got:
						if m.CommandValid && string(m.Command) == cmd {
							applied[i] = true
						}
					default:
					}
					done = done && applied[i]
				}
				if done {
					return
				}
				select {
				case <-wait:
					break collect
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
		t.Fatalf("%q not applied by all nodes: %v", cmd, applied)
	}
	propose("one")
	// Restart peer 2 from its directory on the same port; it takes part
	// in the next commit.
	stopNode(nodes[2])
	nodes[2] = startNode(2, lns[2].View())
	propose("two")
	for _, nd := range nodes {
		stopNode(nd)
	}
}
