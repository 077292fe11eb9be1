package adminapi

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Paths of campaigns.
const (
	PathCampaigns = "/v1/campaigns"
)

// CampaignPath is the path of one campaign.
func CampaignPath(id string) string { return PathCampaigns + "/" + url.PathEscape(id) }

// CampaignActionPath is the path that pauses, resumes, aborts or rolls
// back one campaign (action: one of the CampaignAction constants).
func CampaignActionPath(id, action string) string { return CampaignPath(id) + "/" + action }

// Campaign actions an operator takes on a campaign.
const (
	CampaignPause    = "pause"
	CampaignResume   = "resume"
	CampaignAbort    = "abort"
	CampaignRollback = "rollback"
)

// Campaign kinds: what a campaign changes on each selected device.
const (
	// CampaignKindIdentity rotates the identity credential; rollback
	// cancels the rotations not yet activated.
	CampaignKindIdentity = "identity"
	// CampaignKindDataKey rotates the data key (a new primary version);
	// rollback makes the previous version primary again.
	CampaignKindDataKey = "data-key"
	// CampaignKindFirmware rolls a staged firmware release out
	// (CampaignRequest.Release); rollback takes the desired release back
	// to the previous one.
	CampaignKindFirmware = "firmware"
	// CampaignKindAnchors rolls the next trust-anchor set out to the
	// selected devices stage by stage (CampaignRequest.Roles), and
	// publishes it fleet-wide when the campaign completes; abort only, no
	// rollback (the chain moves forward only).
	CampaignKindAnchors = "anchors"
)

// CampaignRequest creates a campaign (`POST /v1/campaigns`).
type CampaignRequest struct {
	Kind     string `json:"kind"`
	Selector string `json:"selector"`
	// Stages are cumulative fractions of the selected devices, ascending,
	// in (0, 1], the last 1 (ParseStages reads "1%,10%,100%").
	Stages []float64 `json:"stages"`
	// MaxFailure is the failure ratio over reached devices above which
	// the campaign pauses itself, in [0, 1].
	MaxFailure float64 `json:"max_failure"`
	// MinReached devices must have been reached before a stage completes
	// or the failure ratio counts.
	MinReached int `json:"min_reached"`
	// Rate bounds the devices started per minute; 0: no bound.
	Rate int `json:"rate"`
	// DeviceTimeout is how long a connected device may take before it
	// counts as failed, in seconds.
	DeviceTimeoutSeconds float64 `json:"device_timeout_seconds"`
	// Release is the staged firmware release a firmware campaign rolls
	// out (FirmwareRequest.Staged); required for that kind, refused for
	// the others.
	Release uint32 `json:"release,omitempty"`
	// Roles are the anchor keys an anchors campaign replaces ("ca",
	// "update", "firmware"); empty: those of the set prepared already, or
	// ca and update.
	Roles []string `json:"roles,omitempty"`
}

// Validate checks the request as fleetd does; fleetctl calls it before
// sending anything.
func (r CampaignRequest) Validate() error {
	if r.Kind == "" {
		return errors.New("kind is required")
	}
	if r.Kind == CampaignKindFirmware && r.Release == 0 {
		return errors.New("a firmware campaign needs a release")
	}
	if r.Kind != CampaignKindFirmware && r.Release != 0 {
		return fmt.Errorf("a %s campaign takes no release", r.Kind)
	}
	if err := ValidateStages(r.Stages); err != nil {
		return err
	}
	if r.MaxFailure < 0 || r.MaxFailure > 1 || math.IsNaN(r.MaxFailure) {
		return fmt.Errorf("max failure %v is not a ratio in [0, 1]", r.MaxFailure)
	}
	if r.MinReached < 0 {
		return fmt.Errorf("min reached %d is negative", r.MinReached)
	}
	if r.Rate < 0 {
		return fmt.Errorf("rate %d is negative", r.Rate)
	}
	if r.DeviceTimeoutSeconds <= 0 || math.IsNaN(r.DeviceTimeoutSeconds) {
		return fmt.Errorf("device timeout %vs is not positive", r.DeviceTimeoutSeconds)
	}
	return ValidateRoles(r.Kind, r.Roles)
}

// ValidateRoles checks the anchor keys a campaign of kind replaces: only
// an anchors campaign names any, each of ca, update, firmware at most
// once.
func ValidateRoles(kind string, roles []string) error {
	if len(roles) > 0 && kind != CampaignKindAnchors {
		return fmt.Errorf("roles are for anchors campaigns, not %s", kind)
	}
	seen := map[string]bool{}
	for _, role := range roles {
		if role != "ca" && role != "update" && role != "firmware" {
			return fmt.Errorf("unknown anchor key %q (ca, update, firmware)", role)
		}
		if seen[role] {
			return fmt.Errorf("anchor key %q named twice", role)
		}
		seen[role] = true
	}
	return nil
}

// ValidateStages checks that stages are ascending fractions in (0, 1]
// ending at 1.
func ValidateStages(stages []float64) error {
	if len(stages) == 0 {
		return errors.New("no stages")
	}
	prev := 0.0
	for _, s := range stages {
		if !(s > prev) || s > 1 {
			return fmt.Errorf("stages %v: each must be above the one before and at most 100%%", stages)
		}
		prev = s
	}
	if prev != 1 {
		return fmt.Errorf("stages %v: the last must be 100%%", stages)
	}
	return nil
}

// ParsePercent reads "2%" (or "0.5%") as a ratio in [0, 1].
func ParsePercent(s string) (float64, error) {
	num, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	if !ok {
		return 0, fmt.Errorf("%q: want a percentage like 2%%", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || v > 100 || math.IsNaN(v) {
		return 0, fmt.Errorf("%q: want a percentage from 0%% to 100%%", s)
	}
	return v / 100, nil
}

// ParseStages reads "1%,10%,100%".
func ParseStages(s string) ([]float64, error) {
	var out []float64
	for _, p := range strings.Split(s, ",") {
		v, err := ParsePercent(p)
		if err != nil {
			return nil, fmt.Errorf("stages: %w", err)
		}
		out = append(out, v)
	}
	if err := ValidateStages(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ParseRate reads "1000/min", "20/s" or "60/h" as devices per minute; "0"
// or "" means no bound.
func ParseRate(s string) (int, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	num, unit, ok := strings.Cut(s, "/")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n <= 0 {
		return 0, fmt.Errorf("rate %q: want N/min, N/s or N/h with N > 0", s)
	}
	per := map[string]time.Duration{"s": time.Second, "min": time.Minute, "m": time.Minute, "h": time.Hour}[unit]
	if per == 0 {
		return 0, fmt.Errorf("rate %q: unit %q is not s, min or h", s, unit)
	}
	perMin := float64(n) * float64(time.Minute) / float64(per)
	if perMin < 1 {
		return 0, fmt.Errorf("rate %q is below one device a minute", s)
	}
	return int(perMin), nil
}

// Campaign is a campaign as `campaign show` prints it.
type Campaign struct {
	ID                   string          `json:"id"`
	Kind                 string          `json:"kind"`
	Selector             string          `json:"selector"`
	Stages               []float64       `json:"stages"`
	MaxFailure           float64         `json:"max_failure"`
	MinReached           int             `json:"min_reached"`
	Rate                 int             `json:"rate"`
	DeviceTimeoutSeconds float64         `json:"device_timeout_seconds"`
	Release              uint32          `json:"release,omitempty"` // firmware campaigns
	State                string          `json:"state"`
	Stage                int             `json:"stage"` // index in Stages
	Reason               string          `json:"reason,omitempty"`
	CreatedAt            time.Time       `json:"created_at"`
	UpdatedAt            time.Time       `json:"updated_at"`
	StageProgress        []StageProgress `json:"stage_progress"`
	// RolledBackAt is when a rolled-back campaign was rolled back;
	// RecoveredAt when every device it rolled back that was connected ran
	// an accepted state again (M10), absent until then.
	RolledBackAt *time.Time `json:"rolled_back_at,omitempty"`
	RecoveredAt  *time.Time `json:"recovered_at,omitempty"`
	// Devices are the devices and their statuses; only in `show`.
	Devices []CampaignDevice `json:"devices,omitempty"`
}

// Campaign states (CampaignRunning ...) as the API says them.
const (
	CampaignStateRunning    = "running"
	CampaignStatePaused     = "paused"
	CampaignStateCompleted  = "completed"
	CampaignStateAborted    = "aborted"
	CampaignStateRolledBack = "rolled-back"
)

// StageProgress counts the devices of one stage (those it adds to the
// ones before) by status.
type StageProgress struct {
	Devices    int `json:"devices"`
	Pending    int `json:"pending"`
	InProgress int `json:"in_progress"`
	Succeeded  int `json:"succeeded"`
	Failed     int `json:"failed"`
	Away       int `json:"away"`
	Cancelled  int `json:"cancelled"`
}

// CampaignDevice is one device of a campaign.
type CampaignDevice struct {
	ID      string `json:"id"`
	Stage   int    `json:"stage"`
	Status  string `json:"status"` // pending, in-progress, succeeded, failed, away, cancelled
	Version uint32 `json:"version,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// CampaignList answers `GET /v1/campaigns`.
type CampaignList struct {
	Campaigns []Campaign `json:"campaigns"`
}
