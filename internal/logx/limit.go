package logx

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter bounds repeated log lines: for each key (a device and a reason,
// say) it lets one line through per interval and counts the rest, so that
// a device sending garbage in a loop costs one line per interval instead of
// one per message, while the line that does get through says how many were
// left out. Counting what was refused is the caller's job and is never
// limited; only the logging is.
//
// Memory is bounded: keys idle for more than an interval are forgotten
// once the map holds maxKeys, and if every key is still live the map is
// cleared (at worst a few extra lines, never unbounded growth under a
// flood of distinct keys).
//
// It is safe for concurrent use. The zero value is not usable: use
// NewLimiter.
type Limiter struct {
	every   time.Duration
	now     func() time.Time
	maxKeys int

	mu   sync.Mutex
	keys map[string]*limitEntry
}

type limitEntry struct {
	last       time.Time
	suppressed uint64
}

// DefaultLogEvery is how often one key may log: every 10 s, the interval
// fleetd uses for refusals of one device for one reason.
const DefaultLogEvery = 10 * time.Second

// defaultMaxKeys bounds the keys a Limiter remembers.
const defaultMaxKeys = 100_000

// NewLimiter returns a Limiter letting one line per key through every
// interval (0: DefaultLogEvery), on clock now (nil: time.Now).
func NewLimiter(every time.Duration, now func() time.Time) *Limiter {
	if every <= 0 {
		every = DefaultLogEvery
	}
	if now == nil {
		now = time.Now
	}
	return &Limiter{every: every, now: now, maxKeys: defaultMaxKeys, keys: map[string]*limitEntry{}}
}

// Allow reports whether a line for key may be logged now and, if so, how
// many lines for key were suppressed since the last one that was.
func (l *Limiter) Allow(key string) (ok bool, suppressed uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.keys[key]
	if e != nil && now.Sub(e.last) < l.every && !now.Before(e.last) {
		e.suppressed++
		return false, 0
	}
	if e == nil {
		if len(l.keys) >= l.maxKeys {
			l.sweep(now)
		}
		e = &limitEntry{}
		l.keys[key] = e
	}
	suppressed, e.suppressed, e.last = e.suppressed, 0, now
	return true, suppressed
}

// sweep forgets keys idle for an interval, or all of them if none is.
// Suppressed counts of forgotten keys are lost: they were already counted
// by the caller's counters, and only the "suppressed" hint goes.
func (l *Limiter) sweep(now time.Time) {
	for k, e := range l.keys {
		if now.Sub(e.last) >= l.every {
			delete(l.keys, k)
		}
	}
	if len(l.keys) >= l.maxKeys {
		clear(l.keys)
	}
}

// Log logs msg at level through log if key's line is due, adding
// "suppressed": N when N lines for key were left out since the last one.
// It reports whether the line was logged.
func (l *Limiter) Log(log *slog.Logger, level slog.Level, key, msg string, args ...any) bool {
	ok, n := l.Allow(key)
	if !ok {
		return false
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Log(context.Background(), level, msg, args...)
	return true
}
