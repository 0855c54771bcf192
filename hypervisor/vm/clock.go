package vm

import "time"

// LiveClock is guest time read from the host's monotonic clock. It is the
// live implementation of devices.Clock; the replay layer wraps it.
type LiveClock struct {
	start time.Time
}

// NewLiveClock starts guest time at zero now.
func NewLiveClock() *LiveClock { return &LiveClock{start: time.Now()} }

// NewLiveClockAt starts guest time at at now: a machine restored from a
// snapshot taken at guest time at goes on from there, so that its devices'
// deadlines and counters, kept in guest time, still mean what they meant.
func NewLiveClockAt(at time.Duration) *LiveClock {
	return &LiveClock{start: time.Now().Add(-at)}
}

// Now is the time since the clock started (monotonic: unaffected by wall
// clock steps).
func (c *LiveClock) Now() time.Duration { return time.Since(c.start) }
