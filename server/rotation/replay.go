package rotation

import (
	"sync"
	"time"
)

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
