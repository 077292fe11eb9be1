package rotation

import (
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
)

// checkFresh is the one check of an authenticated uplink's age and
// uniqueness, shared by the up and the re-enrolment topics: not expired
// and not issued in the future (protocol.CheckTime), issued within the
// command lifetime (older is stale), and not seen before (replay). It
// returns the message's replay key, which the caller forgets when it fails
// the message for an internal reason, so that the device may retry it
// unchanged; a replay also returns its key.
func (e *Engine) checkFresh(device string, h *protocol.Header, now time.Time) (string, error) {
	if err := protocol.CheckTime(h, now); err != nil {
		return "", reject(ReasonExpired, "device %s: %w", device, err)
	}
	if time.Unix(int64(h.IAT), 0).Add(e.opts.CommandTTL).Before(now) {
		return "", reject(ReasonStale, "device %s: %v issued at %d", device, h.Type, h.IAT)
	}
	key := device + "/" + string(h.ID)
	if e.replays.seen(key, now) {
		return key, reject(ReasonReplay, "device %s: message %x seen before", device, h.ID)
	}
	return key, nil
}

// replayCache remembers (device, message id) pairs for a window. Messages
// older than the window are refused as stale anyway, so nothing older needs
// remembering; that bounds the cache by the uplink rate times the window.
type replayCache struct {
	mu     sync.Mutex
	window time.Duration
	cur    map[string]struct{}
	prev   map[string]struct{}
	since  time.Time
}

func newReplayCache(window time.Duration) *replayCache {
	return &replayCache{window: window, cur: map[string]struct{}{}, prev: map[string]struct{}{}}
}

// seen records the key and reports whether it was already there. Two
// generations rotate every window, so a key is kept between one and two
// windows.
func (c *replayCache) seen(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.since.IsZero() {
		c.since = now
	}
	if now.Sub(c.since) > c.window {
		c.prev, c.cur, c.since = c.cur, map[string]struct{}{}, now
	}
	if _, ok := c.cur[key]; ok {
		return true
	}
	if _, ok := c.prev[key]; ok {
		return true
	}
	c.cur[key] = struct{}{}
	return false
}

// forget removes a key, for messages whose processing failed for an
// internal reason and may be retried by the device with the same bytes.
func (c *replayCache) forget(key string) {
	c.mu.Lock()
	delete(c.cur, key)
	delete(c.prev, key)
	c.mu.Unlock()
}
