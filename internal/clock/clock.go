// Package clock is the injectable time source of tests and the simulator:
// fleetd, the broker's certificate checks and the agents all take a
// func() time.Time, and a Sim hands them one that can jump a year in a
// second.
package clock

import (
	"sync"
	"time"
)

// Sim is a settable clock. Its time does not move on its own: Advance and
// Set move it. It is safe for concurrent use.
type Sim struct {
	mu sync.RWMutex
	t  time.Time
}

// NewSim returns a clock standing at start.
func NewSim(start time.Time) *Sim { return &Sim{t: start} }

// Now returns the clock's time; pass it (the method value) where a
// func() time.Time is wanted.
func (c *Sim) Now() time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.t
}

// Advance moves the clock forward by d and returns the new time.
func (c *Sim) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// Set moves the clock to t (forward or back).
func (c *Sim) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}
