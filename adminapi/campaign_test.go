package adminapi

import (
	"slices"
	"testing"
)

func TestParseCampaignFlags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []float64
		ok   bool
	}{
		{"1%,10%,100%", []float64{0.01, 0.1, 1}, true},
		{"100%", []float64{1}, true},
		{"0.5%, 100%", []float64{0.005, 1}, true},
		{"10%,10%,100%", nil, false},
		{"10%,50%", nil, false},
		{"", nil, false},
		{"10,100%", nil, false},
		{"50%,200%", nil, false},
	} {
		got, err := ParseStages(tc.in)
		if (err == nil) != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("ParseStages(%q) = %v, %v", tc.in, got, err)
		}
	}
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"1000/min", 1000, true}, {"20/s", 1200, true}, {"120/h", 2, true}, {"0", 0, true}, {"", 0, true},
		{"1000", 0, false}, {"10/day", 0, false}, {"-1/min", 0, false}, {"30/h", 0, false}, {"x/min", 0, false},
	} {
		got, err := ParseRate(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v", tc.in, got, err)
		}
	}
	for _, tc := range []struct {
		in   string
		want float64
		ok   bool
	}{
		{"2%", 0.02, true}, {"0%", 0, true}, {"100%", 1, true}, {"2", 0, false}, {"101%", 0, false}, {"-1%", 0, false}, {"NaN%", 0, false},
	} {
		got, err := ParsePercent(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParsePercent(%q) = %v, %v", tc.in, got, err)
		}
	}
}
