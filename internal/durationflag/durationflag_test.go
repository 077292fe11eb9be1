package durationflag

import (
	"errors"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"7d", 7 * Day, true},
		{"0d", 0, true},
		{"400d", 400 * Day, true},
		{"1d12h", Day + 12*time.Hour, true},
		{"1d30m15s", Day + 30*time.Minute + 15*time.Second, true},
		{"90s", 90 * time.Second, true},
		{"720h", 720 * time.Hour, true},
		{"-5m", -5 * time.Minute, true},
		{"0", 0, true},
		{"", 0, false},
		{"d", 0, false},
		{"-1d", 0, false},
		{"+1d", 0, false},
		{"1.5d", 0, false},
		{"1d-1h", 0, false},
		{"1dd", 0, false},
		{"7days", 0, false},
		{"1w", 0, false},
		{"7", 0, false},
		{"106752d", 0, false}, // past time.Duration's range
		{"106751d", 106751 * Day, true},
	} {
		got, err := Parse(tc.in)
		if tc.ok {
			if err != nil || got != tc.want {
				t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %v, %v; want ErrSyntax", tc.in, got, err)
		}
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want string
	}{
		{7 * Day, "7d"},
		{Day + time.Hour, "25h0m0s"},
		{10 * time.Minute, "10m0s"},
		{0, "0"},
	} {
		if got := Format(tc.in); got != tc.want {
			t.Errorf("Format(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestVar(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    time.Duration
		wantErr bool
	}{
		{nil, 10 * time.Minute, false},
		{[]string{"--grace", "7d"}, 7 * Day, false},
		{[]string{"--grace=2h"}, 2 * time.Hour, false},
		{[]string{"--grace", "seven"}, 0, true},
	} {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		fs.SetOutput(discard{})
		var d time.Duration
		Var(fs, &d, "grace", 10*time.Minute, "")
		err := fs.Parse(tc.args)
		if (err != nil) != tc.wantErr || (!tc.wantErr && d != tc.want) {
			t.Errorf("%v: got %v, %v; want %v (error %v)", tc.args, d, err, tc.want, tc.wantErr)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
