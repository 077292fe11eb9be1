package logx

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLimiterAllow(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := NewLimiter(10*time.Second, clk.now)
	type step struct {
		advance    time.Duration
		key        string
		ok         bool
		suppressed uint64
	}
	for i, s := range []step{
		{0, "dev-1/replay", true, 0},
		{0, "dev-1/replay", false, 0},
		{time.Second, "dev-1/replay", false, 0},
		{0, "dev-2/replay", true, 0},    // another device: its own line
		{0, "dev-1/malformed", true, 0}, // another reason: its own line
		{9 * time.Second, "dev-1/replay", true, 2},
		{0, "dev-1/replay", false, 0},
		{10 * time.Second, "dev-1/replay", true, 1},
		{time.Minute, "dev-1/replay", true, 0},
		{-time.Hour, "dev-1/replay", true, 0}, // a clock stepped back does not silence a key
	} {
		clk.advance(s.advance)
		ok, n := l.Allow(s.key)
		if ok != s.ok || n != s.suppressed {
			t.Errorf("step %d: Allow(%q) = %v, %d; want %v, %d", i, s.key, ok, n, s.ok, s.suppressed)
		}
	}
}

// TestLimiterLog: a loop of refusals logs one line per key per interval,
// and the next line carries the number left out.
func TestLimiterLog(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := NewLimiter(0, clk.now)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	logged := 0
	for range 10_000 {
		if l.Log(log, slog.LevelWarn, "dev-1/flood", "refused", "device", "dev-1") {
			logged++
		}
	}
	clk.advance(DefaultLogEvery)
	if l.Log(log, slog.LevelWarn, "dev-1/flood", "refused", "device", "dev-1") {
		logged++
	}
	if logged != 2 {
		t.Errorf("lines logged: got %d, want 2", logged)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || strings.Contains(lines[0], "suppressed") || !strings.Contains(lines[1], "suppressed=9999") {
		t.Errorf("log:\n%s", buf.String())
	}
}

// TestLimiterManyKeys: distinct keys beyond the bound do not grow memory
// without end: idle keys are forgotten first, and a key seen again after
// being forgotten logs again; keys still within their interval are kept
// while there is room.
func TestLimiterManyKeys(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := NewLimiter(time.Second, clk.now)
	l.maxKeys = 100
	for i := range 1000 {
		if ok, _ := l.Allow(fmt.Sprintf("k%d", i)); !ok {
			t.Fatalf("first line of key %d suppressed", i)
		}
		if len(l.keys) > l.maxKeys {
			t.Fatalf("%d keys kept, want at most %d", len(l.keys), l.maxKeys)
		}
	}
	if ok, _ := l.Allow("k999"); ok {
		t.Error("a key just seen logged again within the interval")
	}
	clk.advance(time.Second)
	l.Allow("fresh") // the sweep drops the idle keys, not the new one
	if len(l.keys) != 1 {
		t.Errorf("after an interval of quiet, %d keys kept, want 1", len(l.keys))
	}
}
