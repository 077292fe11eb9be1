package device

import (
	"slices"
	"testing"
)

// TestBrokerList: --broker and device.json take one address or several,
// and the agent goes round them all from wherever it starts.
func TestBrokerList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"fleet.example:8883", []string{"fleet.example:8883"}},
		{"a:8883,b:8883", []string{"a:8883", "b:8883"}},
		{" a:8883 , ,b:8883,", []string{"a:8883", "b:8883"}},
	} {
		got := SplitBrokers(tc.in)
		if !slices.Equal(got, tc.want) {
			t.Errorf("SplitBrokers(%q) = %q, want %q", tc.in, got, tc.want)
		}
		r := newBrokerRing(got)
		if len(got) == 0 {
			if _, err := r.current(); err == nil {
				t.Errorf("%q: no broker, but current gave no error", tc.in)
			}
			continue
		}
		// One full turn visits every broker once and returns to the start.
		start, _ := r.current()
		var seen []string
		for range got {
			addr, err := r.current()
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, addr)
			if moved := r.next(); moved != (len(got) > 1) {
				t.Errorf("%q: next moved=%v with %d brokers", tc.in, moved, len(got))
			}
		}
		slices.Sort(seen)
		if want := slices.Sorted(slices.Values(got)); !slices.Equal(seen, want) {
			t.Errorf("%q: a turn visited %q, want %q", tc.in, seen, want)
		}
		if end, _ := r.current(); end != start {
			t.Errorf("%q: a turn ended at %s, started at %s", tc.in, end, start)
		}
	}
}
