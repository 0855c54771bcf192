package raft

import "fmt"

// Entry is one log entry. Its index is implicit (its position in the log).
// Commands are opaque to Raft and never modified after Start.
type Entry struct {
	Term    uint64
	Command []byte
}

// RequestVoteArgs and the other message types are Figure 2's RPC
// arguments and results, plus the accelerated-backtracking fields.
type RequestVoteArgs struct {
	Term         uint64
	Candidate    int
	LastLogIndex int
	LastLogTerm  uint64
	// PreVote asks "would you vote for me in Term?" without the voter
	// changing any state (raft.go startPreVote).
	PreVote bool
}

type RequestVoteReply struct {
	Term    uint64
	Granted bool
}

type AppendEntriesArgs struct {
	Term         uint64
	Leader       int
	PrevLogIndex int
	PrevLogTerm  uint64
	Entries      []Entry
	LeaderCommit int
}

// AppendEntriesReply carries, when Success is false because the logs do
// not match at PrevLogIndex, what the follower has there so the leader can
// skip a whole term per round trip instead of one entry:
// ConflictTerm is the term of the follower's entry at PrevLogIndex (0 if
// its log is shorter), ConflictIndex the first index the follower holds
// with that term, LogLength the index after its last entry.
type AppendEntriesReply struct {
	Term          uint64
	Success       bool
	ConflictTerm  uint64
	ConflictIndex int
	LogLength     int
}

// InstallSnapshotArgs sends a whole snapshot in one message (Figure 13
// without offset/done chunks: the services here keep snapshots far below
// MaxMessage).
type InstallSnapshotArgs struct {
	Term              uint64
	Leader            int
	LastIncludedIndex int
	LastIncludedTerm  uint64
	Data              []byte
}

type InstallSnapshotReply struct {
	Term uint64
}

// Kind is the first byte of every encoded message.
type Kind byte

const (
	KindRequestVote Kind = 1 + iota
	KindRequestVoteReply
	KindAppendEntries
	KindAppendEntriesReply
	KindInstallSnapshot
	KindInstallSnapshotReply
	kindEnd
)

func (k Kind) String() string {
	switch k {
	case KindRequestVote:
		return "RequestVote"
	case KindRequestVoteReply:
		return "RequestVoteReply"
	case KindAppendEntries:
		return "AppendEntries"
	case KindAppendEntriesReply:
		return "AppendEntriesReply"
	case KindInstallSnapshot:
		return "InstallSnapshot"
	case KindInstallSnapshotReply:
		return "InstallSnapshotReply"
	}
	return fmt.Sprintf("Kind(%d)", byte(k))
}

// MessageKind returns the kind of an encoded message, 0 if b is empty or
// the kind unknown.
func MessageKind(b []byte) Kind {
	if len(b) == 0 || b[0] == 0 || Kind(b[0]) >= kindEnd {
		return 0
	}
	return Kind(b[0])
}

// message is implemented by the pointer types above.
type message interface {
	kind() Kind
	appendTo(b []byte) []byte
	decodeFrom(d *decoder)
}

func (*RequestVoteArgs) kind() Kind      { return KindRequestVote }
func (*RequestVoteReply) kind() Kind     { return KindRequestVoteReply }
func (*AppendEntriesArgs) kind() Kind    { return KindAppendEntries }
func (*AppendEntriesReply) kind() Kind   { return KindAppendEntriesReply }
func (*InstallSnapshotArgs) kind() Kind  { return KindInstallSnapshot }
func (*InstallSnapshotReply) kind() Kind { return KindInstallSnapshotReply }

func (m *RequestVoteArgs) appendTo(b []byte) []byte {
	b = appendUvarint(b, m.Term)
	b = appendInt(b, m.Candidate)
	b = appendInt(b, m.LastLogIndex)
	b = appendUvarint(b, m.LastLogTerm)
	return appendBool(b, m.PreVote)
}

func (m *RequestVoteArgs) decodeFrom(d *decoder) {
	m.Term = d.uvarint("term")
	m.Candidate = d.int("candidate", 0)
	m.LastLogIndex = d.int("last log index", 0)
	m.LastLogTerm = d.uvarint("last log term")
	m.PreVote = d.bool("pre-vote")
}

func (m *RequestVoteReply) appendTo(b []byte) []byte {
	return appendBool(appendUvarint(b, m.Term), m.Granted)
}

func (m *RequestVoteReply) decodeFrom(d *decoder) {
	m.Term = d.uvarint("term")
	m.Granted = d.bool("granted")
}

func (m *AppendEntriesArgs) appendTo(b []byte) []byte {
	b = appendUvarint(b, m.Term)
	b = appendInt(b, m.Leader)
	b = appendInt(b, m.PrevLogIndex)
	b = appendUvarint(b, m.PrevLogTerm)
	b = appendInt(b, m.LeaderCommit)
	return appendEntries(b, m.Entries)
}

func (m *AppendEntriesArgs) decodeFrom(d *decoder) {
	m.Term = d.uvarint("term")
	m.Leader = d.int("leader", 0)
	m.PrevLogIndex = d.int("prev log index", 0)
	m.PrevLogTerm = d.uvarint("prev log term")
	m.LeaderCommit = d.int("leader commit", 0)
	m.Entries = d.entries()
}

func (m *AppendEntriesReply) appendTo(b []byte) []byte {
	b = appendUvarint(b, m.Term)
	b = appendBool(b, m.Success)
	b = appendUvarint(b, m.ConflictTerm)
	b = appendInt(b, m.ConflictIndex)
	return appendInt(b, m.LogLength)
}

func (m *AppendEntriesReply) decodeFrom(d *decoder) {
	m.Term = d.uvarint("term")
	m.Success = d.bool("success")
	m.ConflictTerm = d.uvarint("conflict term")
	m.ConflictIndex = d.int("conflict index", 0)
	m.LogLength = d.int("log length", 0)
}

func (m *InstallSnapshotArgs) appendTo(b []byte) []byte {
	b = appendUvarint(b, m.Term)
	b = appendInt(b, m.Leader)
	b = appendInt(b, m.LastIncludedIndex)
	b = appendUvarint(b, m.LastIncludedTerm)
	return appendBytes(b, m.Data)
}

func (m *InstallSnapshotArgs) decodeFrom(d *decoder) {
	m.Term = d.uvarint("term")
	m.Leader = d.int("leader", 0)
	m.LastIncludedIndex = d.int("last included index", 0)
	m.LastIncludedTerm = d.uvarint("last included term")
	m.Data = d.bytes("snapshot data")
}

func (m *InstallSnapshotReply) appendTo(b []byte) []byte { return appendUvarint(b, m.Term) }

func (m *InstallSnapshotReply) decodeFrom(d *decoder) { m.Term = d.uvarint("term") }

func encodeMessage(m message) []byte {
	return m.appendTo([]byte{byte(m.kind())})
}

func newMessage(k Kind) message {
	switch k {
	case KindRequestVote:
		return new(RequestVoteArgs)
	case KindRequestVoteReply:
		return new(RequestVoteReply)
	case KindAppendEntries:
		return new(AppendEntriesArgs)
	case KindAppendEntriesReply:
		return new(AppendEntriesReply)
	case KindInstallSnapshot:
		return new(InstallSnapshotArgs)
	case KindInstallSnapshotReply:
		return new(InstallSnapshotReply)
	}
	return nil
}

// decodeMessage decodes an encoded message of any kind. Byte slices in
// the result alias b.
func decodeMessage(b []byte) (message, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("%w: message of %d bytes exceeds %d", ErrMalformed, len(b), MaxMessage)
	}
	m := newMessage(MessageKind(b))
	if m == nil {
		if len(b) == 0 {
			return nil, fmt.Errorf("%w: empty message", ErrMalformed)
		}
		return nil, fmt.Errorf("%w: unknown message kind %d", ErrMalformed, b[0])
	}
	d := decoder{b: b[1:]}
	m.decodeFrom(&d)
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("decode %v: %w", m.kind(), err)
	}
	return m, nil
}

// decodeAs decodes b, which must be a message of the same kind as into.
func decodeAs[M message](b []byte, into M) error {
	if k := MessageKind(b); k != into.kind() {
		return fmt.Errorf("%w: got %v, want %v", ErrMalformed, k, into.kind())
	}
	d := decoder{b: b[1:]}
	into.decodeFrom(&d)
	if err := d.done(); err != nil {
		return fmt.Errorf("decode %v: %w", into.kind(), err)
	}
	return nil
}
