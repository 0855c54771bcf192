package vm

import "time"

// LiveClock is guest time read from the host's monotonic clock. It is the
// live implementation of devices.Clock; the replay layer wraps it.
type LiveClock struct {
	start time.Time
}

// NewLiveClock starts guest time at zero now.
func NewLiveClock() *LiveClock { return &LiveClock{start: time.Now()} }

// Now is the time since the clock started (monotonic: unaffected by wall
// clock steps).
func (c *LiveClock) Now() time.Duration { return time.Since(c.start) }
