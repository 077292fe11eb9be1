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
	// Reenrolled counts identities issued to birth credentials.
	Reenrolled atomic.Uint64
	// RenewedExpired counts activations that replaced an identity whose
	// certificate had expired, with that old key (renewal within the
	// window after expiry; re-enrolments are not counted here).
	RenewedExpired atomic.Uint64
	// OldKeyUplinks counts uplinks signed by a superseded key: the old-key
	// usage metric. OldKeyConnects counts broker logins with one.
	OldKeyUplinks  atomic.Uint64
	OldKeyConnects atomic.Uint64
	// Connects counts device logins the engine accepted, the base of the
	// old-key connect ratio. RevokedConnects counts logins refused because
	// the device is revoked (identity or birth credential): someone holds a
	// revoked credential. BirthConnects counts logins with a birth
	// credential, accepted or not: rare outside re-enrolment.
	Connects        atomic.Uint64
	RevokedConnects atomic.Uint64
	BirthConnects   atomic.Uint64
	// Uplinks counts authenticated uplinks, the old-key ratio's base.
	Uplinks atomic.Uint64
	// DataKeysSent counts data-key deliveries; AnchorsSent anchor messages;
	// FirmwareSent manifest offers.
	DataKeysSent atomic.Uint64
	AnchorsSent  atomic.Uint64
	FirmwareSent atomic.Uint64
	mu           sync.Mutex
	rejected     map[Reason]*atomic.Uint64
}

func (s *Stats) reject(reason Reason) {
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
	Reenrolled, RenewedExpired                    uint64
	OldKeyUplinks, OldKeyConnects, Uplinks        uint64
	Connects, RevokedConnects, BirthConnects      uint64
	DataKeysSent, AnchorsSent, FirmwareSent       uint64
	// Rejected counts refused uplinks by reason (Reason's word).
	Rejected map[string]uint64
}

// Stats returns the engine's counters.
func (e *Engine) Stats() StatsSnapshot {
	s := &e.stats
	out := StatsSnapshot{
		Requested: s.Requested.Load(), Issued: s.Issued.Load(), Activated: s.Activated.Load(),
		Retired: s.Retired.Load(), Resent: s.Resent.Load(), Rejected: map[string]uint64{},
		Reenrolled: s.Reenrolled.Load(), RenewedExpired: s.RenewedExpired.Load(),
		OldKeyUplinks: s.OldKeyUplinks.Load(), OldKeyConnects: s.OldKeyConnects.Load(), Uplinks: s.Uplinks.Load(),
		Connects: s.Connects.Load(), RevokedConnects: s.RevokedConnects.Load(), BirthConnects: s.BirthConnects.Load(),
		DataKeysSent: s.DataKeysSent.Load(), AnchorsSent: s.AnchorsSent.Load(), FirmwareSent: s.FirmwareSent.Load(),
	}
	s.mu.Lock()
	for k, v := range s.rejected {
		out.Rejected[string(k)] = v.Load()
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
