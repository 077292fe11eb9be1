package rotation

import (
	"sort"
	"sync"
	"sync/atomic"
)

// Stats counts what the engine did. Read it with Snapshot.
type Stats struct {
	Requested atomic.Uint64
	Issued    atomic.Uint64
	Activated atomic.Uint64
	Retired   atomic.Uint64
	Resent    atomic.Uint64 // duplicate requests answered again, without a state change
	mu        sync.Mutex
	rejected  map[string]*atomic.Uint64
}

func (s *Stats) reject(reason string) {
	s.mu.Lock()
	c := s.rejected[reason]
	if c == nil {
		c = &atomic.Uint64{}
		s.rejected[reason] = c
	}
	s.mu.Unlock()
	c.Add(1)
}

// StatsSnapshot is a copy of the counters.
type StatsSnapshot struct {
	Requested, Issued, Activated, Retired, Resent uint64
	Rejected                                      map[string]uint64
}

// Stats returns the engine's counters.
func (e *Engine) Stats() StatsSnapshot {
	s := &e.stats
	out := StatsSnapshot{
		Requested: s.Requested.Load(), Issued: s.Issued.Load(), Activated: s.Activated.Load(),
		Retired: s.Retired.Load(), Resent: s.Resent.Load(), Rejected: map[string]uint64{},
	}
	s.mu.Lock()
	for k, v := range s.rejected {
		out.Rejected[k] = v.Load()
	}
	s.mu.Unlock()
	return out
}

// Reasons returns the rejection reasons seen, sorted.
func (s StatsSnapshot) Reasons() []string {
	var out []string
	for k := range s.Rejected {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
