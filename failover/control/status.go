// Package control owns a VMM's control socket: an HTTP server on a unix
// socket that answers GET /status with the side's status as JSON and GET
// /metrics with the same numbers as Prometheus text, and the client that
// reads them (ftctl status, the supervisor of ftctl start).
//
// The server knows nothing of how a side computes its status: it asks a
// Source on every request. FromPrimary and FromBackup adapt replication's
// status types to it.
package control

import (
	"os"
	"strings"
	"time"

	"github.com/ftvm/ftvm/replication"
)

// Status is one side of a pair as the control socket reports it.
type Status struct {
	// Role is "primary" or "backup".
	Role string `json:"role"`
	PID  int    `json:"pid"`
	// Phase is State in one word: protected, unprotected, backup-lost,
	// replaying, failing-over, live, halted, stopped (or State's first
	// word for a state this package does not know).
	Phase string `json:"phase"`
	// State is the side's own account, with the reason when it acted.
	State      string `json:"state"`
	Generation uint64 `json:"generation"`
	// Lag: the age of the oldest log entry the backup has not replayed
	// yet, and how many entries that is.
	LagSeconds float64 `json:"lag_seconds"`
	LagEntries uint64  `json:"lag_entries"`
	// The lag's median and 99th percentile over the last minute.
	LagP50Seconds float64 `json:"lag_p50_seconds"`
	LagP99Seconds float64 `json:"lag_p99_seconds"`
	// Held outputs (primary): waiting for the backup's ack.
	HeldOutputs       int     `json:"held_outputs"`
	HeldBytes         int     `json:"held_bytes"`
	OldestHeldSeconds float64 `json:"oldest_held_seconds"`
	// The log channel: entries sent (primary) or received (backup).
	LogEntries          uint64  `json:"log_entries"`
	LogEntriesPerSecond float64 `json:"log_entries_per_second"`
	LogBytesPerSecond   float64 `json:"log_bytes_per_second"`
	// Digests: register and memory digests the primary logged, or the
	// backup checked and found equal.
	Digests uint64 `json:"digests"`
	// Exit is the last exit the backup replayed (0 on a primary).
	Exit     uint64    `json:"exit,omitempty"`
	Failover *Failover `json:"failover,omitempty"`
	// Reprotected is how a survivor was protected again after its
	// failover (it is the primary of a new pair since; Role says so).
	Reprotected *Reprotection `json:"reprotected,omitempty"`
	// ProtectedAgain counts the new backups a primary made from its
	// running guest after losing one (--protect-again).
	ProtectedAgain int `json:"protected_again,omitempty"`
}

// Reprotection is how a live survivor made its new backup: the state
// transfer while the guest ran, and the guest's pause for the last round.
type Reprotection struct {
	Rounds      int     `json:"rounds"`
	Pages       int     `json:"pages"`
	Bytes       int64   `json:"bytes"`
	PauseMS     float64 `json:"pause_ms"`
	TotalMS     float64 `json:"total_ms"`
	MaxThrottle float64 `json:"max_throttle"`
}

// Failover is how a backup went live, each step counted from the moment
// its failure detector found the primary lost.
type Failover struct {
	PrimaryLost     time.Time `json:"primary_lost"`
	Why             string    `json:"why"`
	DrainedMS       float64   `json:"drained_ms"`
	ClaimedMS       float64   `json:"claimed_ms"`
	LiveMS          float64   `json:"live_ms"`
	Generation      uint64    `json:"generation"`
	RewrittenWrites int       `json:"rewritten_writes"`
	ResentFrames    int       `json:"resent_frames"`
}

// Source reports a side's status now; it is called on every request,
// from the server's goroutines.
type Source interface {
	Status() Status
}

// SourceFunc lets a function be a Source.
type SourceFunc func() Status

// Status calls f.
func (f SourceFunc) Status() Status { return f() }

// FromPrimary reports a primary's status (pass Primary.Status).
func FromPrimary(status func() replication.PrimaryStatus) Source {
	pid := os.Getpid()
	return SourceFunc(func() Status { return primaryStatus(pid, status()) })
}

func primaryStatus(pid int, s replication.PrimaryStatus) Status {
	return Status{
		Role: "primary", PID: pid, Phase: primaryPhase(s.State), State: primaryState(s),
		Generation: s.Generation,
		LagSeconds: s.Log.LagTime.Seconds(), LagEntries: s.Log.LagEntries,
		LagP50Seconds: s.Log.LagP50.Seconds(), LagP99Seconds: s.Log.LagP99.Seconds(),
		HeldOutputs: s.Outputs.HeldOutputs, HeldBytes: s.Outputs.HeldBytes,
		OldestHeldSeconds: s.Outputs.OldestHeld.Seconds(),
		LogEntries:        s.Log.Entries, LogEntriesPerSecond: s.Log.EntriesPerSec, LogBytesPerSecond: s.Log.BytesPerSec,
		Digests: s.Recorder.Digests, ProtectedAgain: s.ProtectedAgain,
	}
}

// FromBackup reports a backup's status (pass the function
// BackupConfig.Running hands out).
func FromBackup(status func() replication.BackupStatus) Source {
	pid := os.Getpid()
	return SourceFunc(func() Status {
		s := status()
		if s.Primary != nil {
			// Protected again after its failover: a primary now.
			st := primaryStatus(pid, *s.Primary)
			if t := s.Transfer; t != nil {
				st.Reprotected = &Reprotection{Rounds: t.Rounds, Pages: t.Pages, Bytes: t.Bytes,
					PauseMS: ms(t.Pause), TotalMS: ms(t.Total), MaxThrottle: t.MaxThrottle}
			}
			return st
		}
		st := Status{
			Role: "backup", PID: pid, Phase: backupPhase(s.State), State: s.State,
			Generation: s.Generation,
			LagSeconds: s.Log.LagTime.Seconds(), LagEntries: s.Log.LagEntries,
			LagP50Seconds: s.Log.LagP50.Seconds(), LagP99Seconds: s.Log.LagP99.Seconds(),
			LogEntries: s.Log.Entries, LogEntriesPerSecond: s.Log.EntriesPerSec, LogBytesPerSecond: s.Log.BytesPerSec,
			Digests: s.Replayer.Digests, Exit: s.Exit,
		}
		if f := s.Failover; f != nil {
			st.Failover = &Failover{
				PrimaryLost: f.PrimaryLost, DrainedMS: ms(f.Drained), ClaimedMS: ms(f.Claimed), LiveMS: ms(f.Live),
				Generation: f.Generation, RewrittenWrites: f.RewrittenWrites, ResentFrames: f.ResentFrames,
			}
			if f.Why != nil {
				st.Failover.Why = f.Why.Error()
			}
		}
		return st
	})
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// primaryState adds why the backup was lost to the primary's state.
func primaryState(s replication.PrimaryStatus) string {
	if s.BackupErr != nil && !strings.Contains(s.State, s.BackupErr.Error()) {
		return s.State + " (backup: " + s.BackupErr.Error() + ")"
	}
	return s.State
}

// primaryPhase names a primary's state by its prefix.
func primaryPhase(state string) string {
	has := func(p string) bool { return strings.HasPrefix(state, p) }
	switch {
	case has("replicating"):
		return "protected"
	case has("unprotected"):
		return "unprotected"
	case has("backup lost"):
		return "backup-lost"
	}
	return firstWord(state)
}

// backupPhase names a backup's state by its prefix.
func backupPhase(state string) string {
	has := func(p string) bool { return strings.HasPrefix(state, p) }
	switch {
	case has("primary lost"), has("cannot reach the arbiter"), has("won generation"):
		return "failing-over"
	case has("live"):
		return "live"
	}
	return firstWord(state)
}

// firstWord is a state's first word: "replaying", "halted", "stopped",
// "connecting".
func firstWord(state string) string {
	word, _, _ := strings.Cut(state, ":")
	word, _, _ = strings.Cut(word, " ")
	return word
}
