// Package durationflag reads the durations operators type: Go durations
// ("90s", "720h") and whole days ("7d", "1d12h"), because key lifetimes and
// grace windows are spoken of in days. Every duration flag of keyfleet's
// commands and the policy file use this one parser, so "--grace 7d" and
// "grace: 7d" mean the same.
package durationflag

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Day is 24 hours: a day in a key lifetime is not a calendar day.
const Day = 24 * time.Hour

// ErrSyntax: the text is neither a Go duration nor days.
var ErrSyntax = errors.New("want a duration like 90s, 12h or 7d")

// Parse reads a Go duration, a whole number of days ("400d"), or days
// followed by a Go duration ("1d12h"). Days are never negative.
func Parse(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok {
		v, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", s, ErrSyntax)
		}
		return v, nil
	}
	n, err := strconv.ParseUint(days, 10, 63)
	if err != nil || days == "" || days[0] == '+' || n > uint64(math.MaxInt64/Day) {
		return 0, fmt.Errorf("duration %q: %w", s, ErrSyntax)
	}
	d := time.Duration(n) * Day
	if rest == "" {
		return d, nil
	}
	if rest[0] == '-' || rest[0] == '+' {
		return 0, fmt.Errorf("duration %q: %w", s, ErrSyntax)
	}
	r, err := time.ParseDuration(rest)
	if err != nil || r > math.MaxInt64-d {
		return 0, fmt.Errorf("duration %q: %w", s, ErrSyntax)
	}
	return d + r, nil
}

// Format writes d in days where it is a whole number of them, else as Go
// does, so a flag's default reads as the operator would type it; zero is
// "0", which help output treats as no default.
func Format(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	if d > 0 && d%Day == 0 {
		return strconv.FormatInt(int64(d/Day), 10) + "d"
	}
	return d.String()
}

// Value is a pflag.Value for a duration read with Parse.
type Value struct{ p *time.Duration }

// Set parses s into the duration.
func (v Value) Set(s string) error {
	d, err := Parse(s)
	if err != nil {
		return err
	}
	*v.p = d
	return nil
}

// String is the duration as Format writes it.
func (v Value) String() string {
	if v.p == nil {
		return ""
	}
	return Format(*v.p)
}

// Type names the value in help output.
func (Value) Type() string { return "duration" }

// Var defines a duration flag on fs that accepts days, in place of
// fs.DurationVar.
func Var(fs *pflag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var(Value{p}, name, usage)
}
