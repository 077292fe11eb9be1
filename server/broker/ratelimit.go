package broker

import (
	"sync"
	"time"
)

// Default uplink limits of a device: a token bucket of DefaultUplinkBurst
// messages refilled at DefaultUplinkRate per second.
//
// An honest agent sends few messages: a rotation is 3 (hello, enroll,
// activated); it says hello on every connect, when a step times out (30 s),
// after a delegation it missed, after each firmware install, after each
// anchors message on its own topic (MaxChainSets = 4 sets at most) and
// every ReportEvery (1 h; 1 s in the simulator's year run). Its busiest moment is the catch-up
// after a long absence: a hello per four anchor sets missed, the rotation,
// the data keys and firmware hellos -- a few dozen messages within a
// second or two even after years away with monthly anchor rotations, and
// twice that under the simulator's duplication fault. A burst of 100 and
// 10 per second sustained (36,000 an hour, against the handful an honest
// device sends) leave it a wide margin; a device that publishes faster is
// not running the agent, and is disconnected.
const (
	DefaultUplinkRate  = 10.0
	DefaultUplinkBurst = 100
)

// uplinkLimits is one token bucket per device, keyed by the device name
// the certificate proved, so that reconnecting does not refill it: a
// flooder that is disconnected and comes straight back finds its bucket
// as empty as it left it.
//
// Buckets that have refilled are forgotten from time to time, so memory
// follows the devices recently active, not every device ever seen.
type uplinkLimits struct {
	rate  float64 // tokens per second
	burst float64

	mu        sync.Mutex
	buckets   map[string]*bucket
	nextSweep int
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newUplinkLimits(rate float64, burst int) *uplinkLimits {
	return &uplinkLimits{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}, nextSweep: 1024}
}

// allow takes one token from device's bucket at now, and reports whether
// there was one.
func (l *uplinkLimits) allow(device string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[device]
	if b == nil {
		if len(l.buckets) >= l.nextSweep {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[device] = b
	}
	l.refill(b, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *uplinkLimits) refill(b *bucket, now time.Time) {
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens += dt.Seconds() * l.rate
		if b.tokens > l.burst {
			b.tokens = l.burst
		}
	}
	b.last = now
}

// sweep forgets full buckets (a new one starts full anyway) and sets when
// to sweep next, so that the cost stays amortised over the insertions.
func (l *uplinkLimits) sweep(now time.Time) {
	for k, b := range l.buckets {
		l.refill(b, now)
		if b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
	l.nextSweep = max(1024, 2*len(l.buckets))
}
