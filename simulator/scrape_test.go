package simulator

import (
	"fmt"
	"math"
	"testing"
)

// Quantiles interpolate within the bucket as Prometheus' histogram_quantile
// does, and banked lifetimes add up.
func TestHistogramQuantile(t *testing.T) {
	h := histogram{Count: 10, Buckets: map[float64]uint64{0.1: 2, 0.5: 6, 1: 10, math.Inf(1): 10}}
	for _, tc := range []struct{ q, want float64 }{{0.5, 0.4}, {0.99, 0.9875}, {0.1, 0.05}, {1, 1}} {
		t.Run(fmt.Sprint(tc.q), func(t *testing.T) {
			if got := h.quantile(tc.q); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
			}
		})
	}
	above := histogram{Count: 4, Buckets: map[float64]uint64{1: 1, math.Inf(1): 4}}
	if got := above.quantile(0.99); got != 1 {
		t.Errorf("above the last finite bound: %v, want that bound", got)
	}
	if got := (histogram{}).quantile(0.99); !math.IsNaN(got) {
		t.Errorf("empty: %v, want NaN", got)
	}
	var sum histogram
	sum.add(h)
	sum.add(above)
	if sum.Count != 14 || sum.Buckets[1] != 11 || sum.Buckets[math.Inf(1)] != 14 {
		t.Errorf("sum of lifetimes: %+v", sum)
	}
}
