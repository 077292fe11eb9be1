package broker

import (
	"fmt"
	"testing"
	"time"
)

// TestUplinkLimits walks one device's bucket through a burst, the refill,
// and a reconnect (the bucket is per device, not per connection).
func TestUplinkLimits(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		name   string
		at     time.Duration
		device string
		n      int // messages sent at once
		want   int // of them allowed
	}
	for _, tt := range []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		{"defaults", DefaultUplinkRate, DefaultUplinkBurst, []step{
			{"a burst within the bucket", 0, "dev-1", 100, 100},
			{"the next one is over", 0, "dev-1", 1, 0},
			{"another device has its own bucket", 0, "dev-2", 100, 100},
			{"refilled at the rate", time.Second, "dev-1", 20, 10},
			{"nothing left", time.Second, "dev-1", 1, 0},
			{"an hour later, full again but no more", time.Hour, "dev-1", 150, 100},
		}},
		{"an honest device never meets it", 10, 100, []step{
			{"catch-up after a long absence", 0, "dev-1", 60, 60},
			{"a rotation", 2 * time.Second, "dev-1", 3, 3},
			{"hello every second for a minute", 3 * time.Second, "dev-1", 1, 1},
			{"another hello", 4 * time.Second, "dev-1", 1, 1},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newUplinkLimits(tt.rate, tt.burst)
			for _, s := range tt.steps {
				got := 0
				for range s.n {
					if l.allow(s.device, t0.Add(s.at)) {
						got++
					}
				}
				if got != s.want {
					t.Errorf("%s: %d of %d allowed, want %d", s.name, got, s.n, s.want)
				}
			}
		})
	}
}

// TestUplinkLimitsForget: full buckets are forgotten, so memory follows the
// devices active lately, while a drained bucket is kept (reconnecting does
// not refill it).
func TestUplinkLimitsForget(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newUplinkLimits(1, 5)
	for range 5 {
		l.allow("flooder", t0)
	}
	for i := range 5000 { // one new device a second, each sending once
		l.allow(fmt.Sprintf("dev-%d", i), t0.Add(time.Duration(i)*time.Second))
	}
	if n := len(l.buckets); n > 4096 {
		t.Errorf("%d buckets kept, want old full ones forgotten", n)
	}
	l2 := newUplinkLimits(1, 5)
	for range 5 {
		l2.allow("flooder", t0)
	}
	for i := range 5000 {
		l2.allow(fmt.Sprintf("dev-%d", i), t0)
	}
	if l2.allow("flooder", t0) {
		t.Error("a drained bucket was refilled by a sweep")
	}
}
