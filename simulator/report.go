package simulator

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"
)

// Report is what a run measured. JSON field names are an interface:
// operators' scripts read them; add fields, never rename.
type Report struct {
	Devices            int            `json:"devices"`
	Rounds             int            `json:"rounds"`
	RotationsCompleted int            `json:"rotations_completed"`
	RotationsFailed    int            `json:"rotations_failed"`
	RotationsPerSec    float64        `json:"rotations_per_s"`
	DurationS          float64        `json:"duration_s"`
	P50ms              float64        `json:"p50_ms"`
	P95ms              float64        `json:"p95_ms"`
	P99ms              float64        `json:"p99_ms"`
	MaxMs              float64        `json:"max_ms"`
	BytesUp            uint64         `json:"bytes_up"`
	BytesDown          uint64         `json:"bytes_down"`
	BytesPerRotation   float64        `json:"bytes_per_rotation"`
	HSMOps             uint64         `json:"hsm_ops"`
	HSMOpsPerRotation  float64        `json:"hsm_ops_per_rotation"`
	ProvisionS         float64        `json:"provision_s"`
	Server             string         `json:"server"`
	NotConverged       []string       `json:"not_converged"`
	FailuresByReason   map[string]int `json:"failures_by_reason"`
	// Bytes per rotation in each direction, application payload.
	BytesUpPerRotation   float64 `json:"bytes_up_per_rotation"`
	BytesDownPerRotation float64 `json:"bytes_down_per_rotation"`

	// Cost of fleetd, sampled at the end with every device connected.
	ConnectedDevices int    `json:"connected_devices"`
	FleetdRSSBytes   uint64 `json:"fleetd_rss_bytes"`
	FleetdGoroutines int    `json:"fleetd_goroutines"`
	// Per 1,000 connected devices.
	FleetdRSSPer1kBytes   float64 `json:"fleetd_rss_per_1k_devices_bytes"`
	FleetdGoroutinesPer1k float64 `json:"fleetd_goroutines_per_1k_devices"`
	SimulatorRSSBytes     uint64  `json:"simulator_rss_bytes"`
	// SameProcess: fleetd ran inside the simulator, so its RSS and
	// goroutines include the simulated devices'. Use --server for fleetd's own.
	SameProcess bool `json:"same_process"`

	// Fleet model (--fleet): fleet size, connection budget, and the memory
	// a sleeping device costs the simulator (its keystore bytes).
	FleetSize              int     `json:"fleet_size,omitempty"`
	MaxConnected           int     `json:"max_connected,omitempty"`
	SleepingBytesPerDevice float64 `json:"sleeping_bytes_per_device,omitempty"`
	// Soak is the long-run record (--soak), if any.
	Soak *Soak `json:"soak,omitempty"`
	// OfferedRate is --rate (0: every device at once).
	OfferedRate float64 `json:"offered_rate_per_s"`
	// Faults injected, by kind.
	Faults FaultCounts `json:"faults"`

	// Baseline measured in this run, and the rotation rate as ratios of it.
	Baseline            *Baseline `json:"baseline,omitempty"`
	RotationsPerHSMSign float64   `json:"rotations_per_hsm_sign_rate,omitempty"`
	RotationsPerHSMCert float64   `json:"rotations_per_hsm_cert_rate,omitempty"`
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted)-1) + 0.5)
	return float64(sorted[i].Microseconds()) / 1000
}

func (r *Report) fillLatency(lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.P50ms = percentile(lat, 0.50)
	r.P95ms = percentile(lat, 0.95)
	r.P99ms = percentile(lat, 0.99)
	if len(lat) > 0 {
		r.MaxMs = float64(lat[len(lat)-1].Microseconds()) / 1000
	}
}

// WriteTable prints the report for people.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "devices\t%d\n", r.Devices)
	if r.FleetSize > 0 {
		fmt.Fprintf(tw, "fleet model\t%d devices, at most %d awake, %.0f bytes per sleeping device\n",
			r.FleetSize, r.MaxConnected, r.SleepingBytesPerDevice)
	}
	fmt.Fprintf(tw, "rotations completed\t%d\n", r.RotationsCompleted)
	fmt.Fprintf(tw, "rotations failed\t%d\n", r.RotationsFailed)
	fmt.Fprintf(tw, "rotations/s\t%.1f\n", r.RotationsPerSec)
	fmt.Fprintf(tw, "time-to-rotate p50 / p95 / p99 / max\t%.1f / %.1f / %.1f / %.1f ms\n", r.P50ms, r.P95ms, r.P99ms, r.MaxMs)
	fmt.Fprintf(tw, "bytes up / down\t%d / %d (%.0f per rotation)\n", r.BytesUp, r.BytesDown, r.BytesPerRotation)
	fmt.Fprintf(tw, "HSM operations\t%d (%.3f per rotation)\n", r.HSMOps, r.HSMOpsPerRotation)
	fmt.Fprintf(tw, "provisioning\t%.1f s\n", r.ProvisionS)
	note := ""
	if r.SameProcess {
		note = " (shared with the simulator: use --server for fleetd alone)"
	}
	fmt.Fprintf(tw, "fleetd RSS\t%.1f MiB, %.0f KiB per 1k connected devices%s\n", float64(r.FleetdRSSBytes)/(1<<20), r.FleetdRSSPer1kBytes/1024, note)
	fmt.Fprintf(tw, "fleetd goroutines\t%d, %.0f per 1k connected devices\n", r.FleetdGoroutines, r.FleetdGoroutinesPer1k)
	fmt.Fprintf(tw, "simulator RSS\t%.1f MiB\n", float64(r.SimulatorRSSBytes)/(1<<20))
	if r.Soak != nil && len(r.Soak.Samples) > 0 {
		fmt.Fprintf(tw, "soak\t%.0f s, %d reconnects, %d samples; after %.0f s warm-up: RSS mean %.1f MiB, max deviation %.1f%%, goroutines %d..%d\n",
			r.Soak.Samples[len(r.Soak.Samples)-1].AtS, r.Soak.Reconnects, len(r.Soak.Samples), r.Soak.WarmupS,
			r.Soak.RSSMeanBytes/(1<<20), r.Soak.RSSMaxDeviationPct, r.Soak.GoroutinesMin, r.Soak.GoroutinesMax)
	}
	if r.Baseline != nil {
		fmt.Fprintf(tw, "HSM baseline (same run)\t%.0f signs/s, %.0f certificates/s\n", r.Baseline.SignsPerSec, r.Baseline.CertsPerSec)
		fmt.Fprintf(tw, "rotations/s as a ratio\t%.3f of the sign rate, %.3f of the certificate rate\n", r.RotationsPerHSMSign, r.RotationsPerHSMCert)
	}
	fmt.Fprintf(tw, "faults injected\t%d crashes, %d offline, %d flaps, %d fleetd kills, %d broker restarts\n",
		r.Faults.Crashes, r.Faults.Offline, r.Faults.Flaps, r.Faults.FleetdKills, r.Faults.BrokerRestarts)
	fmt.Fprintf(tw, "message faults\t%d dropped, %d duplicated, %d delayed; %d skewed clocks\n",
		r.Faults.Dropped, r.Faults.Duplicated, r.Faults.Delayed, r.Faults.Skewed)
	for reason, n := range r.FailuresByReason {
		fmt.Fprintf(tw, "failed: %s\t%d\n", reason, n)
	}
	if len(r.NotConverged) > 0 {
		fmt.Fprintf(tw, "not converged\t%v\n", r.NotConverged)
	}
	return tw.Flush()
}
