package rotation

import (
	"testing"
	"time"
)

// TestAnswerLimiter: one per (device, reason) per interval, the rest
// counted and reported with the next one let through.
func TestAnswerLimiter(t *testing.T) {
	var l answerLimiter
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		device     string
		reason     Reason
		at         time.Duration
		ok         bool
		suppressed uint64
	}{
		{"d1", ReasonMalformed, 0, true, 0},
		{"d1", ReasonMalformed, time.Second, false, 0},
		{"d1", ReasonMalformed, AnswerInterval - time.Nanosecond, false, 0},
		{"d1", ReasonReplay, time.Second, true, 0},    // another reason
		{"d2", ReasonMalformed, time.Second, true, 0}, // another device
		{"d1", ReasonMalformed, AnswerInterval, true, 2},
		{"d1", ReasonMalformed, AnswerInterval + time.Second, false, 0},
		{"d1", ReasonMalformed, 3 * AnswerInterval, true, 1},
		{"d1", ReasonMalformed, time.Second, true, 0}, // the clock went back: let through
	}
	for i, s := range steps {
		ok, n := l.allow(s.device, s.reason, t0.Add(s.at))
		if ok != s.ok || n != s.suppressed {
			t.Errorf("step %d (%s %s at %v): got %v, %d; want %v, %d", i, s.device, s.reason, s.at, ok, n, s.ok, s.suppressed)
		}
	}
}
