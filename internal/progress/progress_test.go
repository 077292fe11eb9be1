package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestPlainLines(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var out bytes.Buffer
	off := false
	b := New(&out, 1000, "connecting", Options{Unit: "dev", Terminal: &off, Now: c.now})
	for _, step := range []struct {
		after time.Duration
		set   int
	}{
		{time.Millisecond, 900}, // a jump at once: no line, no rate
		{time.Second, 910},
		{4 * time.Second, 950}, // 5.001 s: the first line
		{time.Second, 960},
		{5 * time.Second, 1000}, // 11.001 s: the second
	} {
		c.t = c.t.Add(step.after)
		b.Set(step.set)
	}
	b.Finish()
	b.Finish() // once only
	want := "connecting: 950/1000 (95%), 190 dev/s\n" +
		"connecting: 1000/1000 (100%), 91 dev/s\n" +
		"connecting: 1000/1000 (100%), 91 dev/s, done in 11s\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	if strings.Contains(out.String(), "\r") {
		t.Error("plain output holds carriage returns")
	}
}

func TestRate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		elapsed time.Duration
		n       int
		unit    string
		want    string
	}{
		{"everything at once", time.Nanosecond, 4532, "dev", ""},
		{"under a second", 999 * time.Millisecond, 10, "dev", ""},
		{"one second", time.Second, 10, "dev", "10 dev/s"},
		{"slow", 4 * time.Second, 3, "dev", "0.8 dev/s"},
		{"no unit", 10 * time.Second, 100, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{t: time.Unix(0, 0)}
			b := New(&bytes.Buffer{}, 100, "x", Options{Unit: tc.unit, Now: c.now})
			b.n = tc.n
			c.t = c.t.Add(tc.elapsed)
			if got := b.rate(); got != tc.want {
				t.Errorf("rate = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestTerminalFrames: on a terminal the library draws the bar, with the
// count and the rate counted here, and Finish clears the line.
func TestTerminalFrames(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	var out bytes.Buffer
	on := true
	b := New(&out, 10, "provisioning", Options{Unit: "dev", Terminal: &on, Now: c.now})
	c.t = c.t.Add(2 * time.Second)
	b.Add(5) // the first frame is drawn at once
	first := out.String()
	if !strings.Contains(first, "provisioning 2.5 dev/s") || !strings.Contains(first, "50%") || !strings.Contains(first, "5/10") {
		t.Errorf("first frame %q: want the description with the rate, 50%% and 5/10", first)
	}
	b.Finish()
	frames := strings.Split(out.String(), "\r")
	if last := frames[len(frames)-1]; strings.TrimSpace(last) != "" {
		t.Errorf("Finish left %q on the line", last)
	}
}

func TestNil(t *testing.T) {
	b := New(nil, 10, "x", Options{})
	b.Add(1)
	b.Set(2)
	b.Finish()
	if b != nil {
		t.Error("a nil writer gave a bar")
	}
}
