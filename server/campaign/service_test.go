package campaign

import (
	"fmt"
	"slices"
	"testing"

	"github.com/keyfleet/keyfleet/server/store"
)

// Stage sizes are cumulative, at least one device each, all at the last.
func TestTargets(t *testing.T) {
	for _, tc := range []struct {
		devices int
		stages  []float64
		want    []int
	}{
		{30, []float64{0.1, 0.5, 1}, []int{3, 15, 30}},
		{200, []float64{0.05, 0.25, 1}, []int{10, 50, 200}},
		{10, []float64{0.01, 0.1, 1}, []int{1, 1, 10}},
		{3, []float64{0.01, 0.5, 1}, []int{1, 2, 3}},
		{1, []float64{0.01, 1}, []int{1, 1}},
		{7, []float64{1}, []int{7}},
	} {
		t.Run(fmt.Sprint(tc.devices, tc.stages), func(t *testing.T) {
			c := &store.Campaign{Stages: tc.stages, Devices: make([]store.CampaignDevice, tc.devices)}
			if got := Targets(c); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
