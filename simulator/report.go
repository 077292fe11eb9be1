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
	// RequestS is the time the rotation requests took to be answered
	// (fleetd records each device's new pending version before it
	// answers), summed over the rounds: part of DurationS.
	RequestS float64 `json:"request_s"`

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

	// Campaign is campaign mode's record (--campaign), if any.
	Campaign *CampaignReport `json:"campaign,omitempty"`

	// Nodes is the record of a run over several fleetd nodes (--nodes, or
	// --server with several addresses), if any.
	Nodes *NodesReport `json:"nodes,omitempty"`
}

// CampaignReport is what campaign mode measured: each campaign stage by
// stage, the self-pause, the rollback, the away devices' return, fleetd
// killed mid-campaign, and M5 and M10 as fleetd's /metrics gave them
// (summed over fleetd's lifetimes when it was killed).
type CampaignReport struct {
	Stages         []float64     `json:"stages"`
	MaxFailure     float64       `json:"max_failure"`
	MinReached     int           `json:"min_reached"`
	RatePerMin     int           `json:"rate_per_min"`
	DeviceTimeoutS float64       `json:"device_timeout_s"`
	Runs           []CampaignRun `json:"runs"`
	// Revoked devices at the end of the run, and the time until fleetd
	// had counted every revocation.
	Revoked int     `json:"revoked"`
	RevokeS float64 `json:"revoke_s"`
	// M5: revocation latency (request to the last session dropped), p99
	// of fleetd's keyfleet_revocation_duration_seconds, and its samples.
	M5RevocationP99S float64 `json:"m5_revocation_p99_s"`
	M5Revocations    uint64  `json:"m5_revocations"`
	// M10: recovery time (a failed or cancelled rotation to the device's
	// next activation) from keyfleet_recovery_duration_seconds{slot="identity"}.
	M10RecoveryP50S  float64 `json:"m10_recovery_p50_s"`
	M10RecoveryP99S  float64 `json:"m10_recovery_p99_s"`
	M10RecoveryMeanS float64 `json:"m10_recovery_mean_s"`
	M10Recoveries    uint64  `json:"m10_recoveries"`
	// The audit chain at the end: verified, its length, and any version
	// issued more than once (none is the contract).
	AuditVerified       bool     `json:"audit_verified"`
	AuditRecords        uint64   `json:"audit_records"`
	VersionsIssuedTwice []string `json:"versions_issued_twice"`
	// Problems are the expectations the run did not meet; fleetsim exits
	// non-zero when there is any.
	Problems []string `json:"problems"`
}

// CampaignRun is one campaign of a campaign-mode run.
type CampaignRun struct {
	// Name: "campaign", "canary-failure" or "rerun".
	Name         string        `json:"name"`
	ID           string        `json:"id"`
	Devices      int           `json:"devices"`
	State        string        `json:"state"`
	Reason       string        `json:"reason"`
	DurationS    float64       `json:"duration_s"`
	StageReports []StageReport `json:"stage_reports"`
	// DeviceTimeoutS is this campaign's device timeout.
	DeviceTimeoutS float64 `json:"device_timeout_s"`
	// FailedDevices failed in a campaign meant to complete.
	FailedDevices []string `json:"failed_devices,omitempty"`
	// The canary failure: devices made to fail, whether and when (since
	// creation) the campaign paused itself, and in which stage (1-based).
	InjectedFailures int     `json:"injected_failures,omitempty"`
	SelfPaused       bool    `json:"self_paused"`
	PausedInStage    int     `json:"paused_in_stage,omitempty"`
	PausedAfterS     float64 `json:"paused_after_s,omitempty"`
	// The rollback: from its request until every device had reconnected
	// with a credential the broker accepts and fleetd recorded no open
	// rotation; the rotations it cancelled; devices refused meanwhile.
	RolledBack     bool    `json:"rolled_back"`
	RollbackReason string  `json:"rollback_reason,omitempty"`
	RollbackS      float64 `json:"rollback_s,omitempty"`
	// RollbackRequestS is the rollback request alone (fleetd cancelling
	// the open rotations and recording the campaign rolled back).
	RollbackRequestS  float64  `json:"rollback_request_s,omitempty"`
	RollbackCancelled int      `json:"rollback_cancelled,omitempty"`
	RollbackAccepted  int      `json:"rollback_accepted,omitempty"`
	RollbackRefused   []string `json:"rollback_refused,omitempty"`
	// Away devices: how many, how many converged (or failed) after they
	// came back, in how long after their return, and which did not.
	AwayDevices      int      `json:"away_devices"`
	AwayConverged    int      `json:"away_converged"`
	AwayFailed       int      `json:"away_failed,omitempty"`
	AwayConvergeP50S float64  `json:"away_converge_p50_s,omitempty"`
	AwayConvergeMaxS float64  `json:"away_converge_max_s,omitempty"`
	AwayNotConverged []string `json:"away_not_converged"`
	// FleetdKills: fleetd SIGKILLed mid-campaign and where it resumed.
	FleetdKills []KillReport `json:"fleetd_kills,omitempty"`
	// Audit counts the campaign's audit records by action (its own, and
	// the per-device ones it acted on: failed, cancelled).
	Audit map[string]int `json:"audit"`
}

// StageReport is one stage of a campaign, counted when it ended (passed,
// or paused): devices it added, time from its start to then, outcomes.
type StageReport struct {
	Stage        int     `json:"stage"`
	Fraction     float64 `json:"fraction"`
	Devices      int     `json:"devices"`
	DurationS    float64 `json:"duration_s"`
	Succeeded    int     `json:"succeeded"`
	Failed       int     `json:"failed"`
	Away         int     `json:"away"`
	Cancelled    int     `json:"cancelled"`
	Pending      int     `json:"pending"`
	InProgress   int     `json:"in_progress"`
	FailureRatio float64 `json:"failure_ratio"`
}

// KillReport is one SIGKILL of fleetd mid-campaign: the stage its store
// held, the stage it resumed at, and how long it was down.
type KillReport struct {
	StageAtKill int     `json:"stage_at_kill"`
	StateAtKill string  `json:"state_at_kill"`
	StageAfter  int     `json:"stage_after"`
	StateAfter  string  `json:"state_after"`
	DowntimeS   float64 `json:"downtime_s"`
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
	if r.RequestS > 0 {
		fmt.Fprintf(tw, "rotation requests answered in\t%.1f s\n", r.RequestS)
	}
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
	if r.Campaign != nil {
		r.Campaign.writeTable(tw)
	}
	if r.Nodes != nil {
		r.Nodes.writeTable(tw)
	}
	return tw.Flush()
}

func (c *CampaignReport) writeTable(tw io.Writer) {
	for _, run := range c.Runs {
		fmt.Fprintf(tw, "campaign %s (%s)\t%d devices, %s after %.1f s: %s\n", run.ID, run.Name, run.Devices, run.State, run.DurationS, run.Reason)
		for _, s := range run.StageReports {
			fmt.Fprintf(tw, "  stage %d (%g%%)\t%d devices, %.1f s: %d succeeded, %d failed, %d away, %d cancelled; failure ratio %.1f%%\n",
				s.Stage, s.Fraction*100, s.Devices, s.DurationS, s.Succeeded, s.Failed, s.Away, s.Cancelled, 100*s.FailureRatio)
		}
		if run.InjectedFailures > 0 {
			fmt.Fprintf(tw, "  canary failure\t%d agents made to fail; paused itself: %v (stage %d, after %.1f s)\n",
				run.InjectedFailures, run.SelfPaused, run.PausedInStage, run.PausedAfterS)
		}
		if run.RolledBack {
			fmt.Fprintf(tw, "  rollback\t%.1f s until %d devices reconnected with an accepted credential (%d refused); request %.2f s, %d rotations cancelled\n",
				run.RollbackS, run.RollbackAccepted, len(run.RollbackRefused), run.RollbackRequestS, run.RollbackCancelled)
		}
		if run.AwayDevices > 0 {
			fmt.Fprintf(tw, "  away devices\t%d, %d converged after their return (p50 %.1f s, max %.1f s), %d not\n",
				run.AwayDevices, run.AwayConverged, run.AwayConvergeP50S, run.AwayConvergeMaxS, len(run.AwayNotConverged))
		}
		for _, k := range run.FleetdKills {
			fmt.Fprintf(tw, "  fleetd SIGKILLed\tin stage %d (%s), resumed in stage %d (%s) after %.1f s\n",
				k.StageAtKill, k.StateAtKill, k.StageAfter, k.StateAfter, k.DowntimeS)
		}
	}
	if c.Revoked > 0 {
		fmt.Fprintf(tw, "revoked\t%d devices\n", c.Revoked)
	}
	fmt.Fprintf(tw, "M5 revocation latency p99 (/metrics)\t%.3f s over %d revocations\n", c.M5RevocationP99S, c.M5Revocations)
	fmt.Fprintf(tw, "M10 recovery time p50 / p99 / mean (/metrics)\t%.1f / %.1f / %.1f s over %d recoveries\n",
		c.M10RecoveryP50S, c.M10RecoveryP99S, c.M10RecoveryMeanS, c.M10Recoveries)
	fmt.Fprintf(tw, "audit\t%d records, chain verified: %v, versions issued twice: %d\n", c.AuditRecords, c.AuditVerified, len(c.VersionsIssuedTwice))
	for _, p := range c.Problems {
		fmt.Fprintf(tw, "PROBLEM\t%s\n", p)
	}
}
