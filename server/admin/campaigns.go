package admin

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/store"
)

// Campaigns creates, lists and steers staged campaigns; *campaign.Service
// satisfies it. Nil when the store keeps no campaigns: the API then
// answers that it does not.
type Campaigns interface {
	Create(ctx context.Context, sp campaign.Spec, actor string) (*store.Campaign, error)
	Get(ctx context.Context, id string) (*store.Campaign, error)
	List(ctx context.Context) ([]*store.Campaign, error)
	Pause(ctx context.Context, id, actor string) (*store.Campaign, error)
	Resume(ctx context.Context, id, actor string) (*store.Campaign, error)
	Abort(ctx context.Context, id, actor string) (*store.Campaign, error)
	Rollback(ctx context.Context, id, actor string) (*store.Campaign, error)
}

var errNoCampaigns = errors.New("admin: this fleetd's store keeps no campaigns")

func (h *handler) campaigns(w http.ResponseWriter) bool {
	if h.p.Campaigns == nil {
		writeErr(w, http.StatusNotImplemented, adminapi.CodeInternal, errNoCampaigns)
		return false
	}
	return true
}

func (h *handler) createCampaign(w http.ResponseWriter, r *http.Request) {
	var req adminapi.CampaignRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	if err := req.Validate(); err != nil {
		invalid(w, err)
		return
	}
	if !h.campaigns(w) {
		return
	}
	c, err := h.p.Campaigns.Create(r.Context(), campaign.Spec{Kind: req.Kind, Selector: req.Selector, Stages: req.Stages,
		MaxFailure: req.MaxFailure, MinReached: req.MinReached, Rate: req.Rate, Release: req.Release,
		DeviceTimeout: time.Duration(req.DeviceTimeoutSeconds * float64(time.Second)), Roles: req.Roles}, actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, campaignInfo(c, false))
}

func (h *handler) listCampaigns(w http.ResponseWriter, r *http.Request) {
	if !h.campaigns(w) {
		return
	}
	cs, err := h.p.Campaigns.List(r.Context())
	if err != nil {
		fail(w, err)
		return
	}
	out := adminapi.CampaignList{Campaigns: []adminapi.Campaign{}}
	for _, c := range cs {
		out.Campaigns = append(out.Campaigns, campaignInfo(c, false))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) showCampaign(w http.ResponseWriter, r *http.Request) {
	if !h.campaigns(w) {
		return
	}
	c, err := h.p.Campaigns.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, campaignInfo(c, r.URL.Query().Get("devices") != "false"))
}

func (h *handler) campaignAction(w http.ResponseWriter, r *http.Request) {
	if !h.campaigns(w) {
		return
	}
	act := map[string]func(context.Context, string, string) (*store.Campaign, error){
		adminapi.CampaignPause: h.p.Campaigns.Pause, adminapi.CampaignResume: h.p.Campaigns.Resume,
		adminapi.CampaignAbort: h.p.Campaigns.Abort, adminapi.CampaignRollback: h.p.Campaigns.Rollback,
	}[r.PathValue("action")]
	if act == nil {
		writeErr(w, http.StatusNotFound, adminapi.CodeNotFound, errors.New("admin: no such campaign action"))
		return
	}
	c, err := act(r.Context(), r.PathValue("id"), actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	h.log.Info("campaign "+r.PathValue("action"), "campaign", c.ID, "state", string(c.State), "actor", actor(r))
	writeJSON(w, http.StatusOK, campaignInfo(c, false))
}

// campaignInfo is c for the API, with its progress per stage and, if
// devices, every device's status.
func campaignInfo(c *store.Campaign, devices bool) adminapi.Campaign {
	out := adminapi.Campaign{ID: c.ID, Kind: c.Kind, Selector: c.Selector, Stages: c.Stages, MaxFailure: c.MaxFailure,
		MinReached: c.MinReached, Rate: c.Rate, DeviceTimeoutSeconds: c.DeviceTimeout.Seconds(), State: string(c.State),
		Stage: c.Stage, Reason: c.Reason, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, Release: c.Release}
	if !c.RolledBackAt.IsZero() {
		out.RolledBackAt = &c.RolledBackAt
	}
	if !c.RecoveredAt.IsZero() {
		out.RecoveredAt = &c.RecoveredAt
	}
	targets := campaign.Targets(c)
	from := 0
	for stage, to := range targets {
		p := adminapi.StageProgress{Devices: to - from}
		for _, d := range c.Devices[from:to] {
			switch d.Status {
			case store.DevicePending:
				p.Pending++
			case store.DeviceInProgress:
				p.InProgress++
			case store.DeviceSucceeded:
				p.Succeeded++
			case store.DeviceFailed:
				p.Failed++
			case store.DeviceAway:
				p.Away++
			case store.DeviceCancelled:
				p.Cancelled++
			}
			if devices {
				status := string(d.Status)
				if d.Status == store.DevicePending {
					status = "pending"
				}
				out.Devices = append(out.Devices, adminapi.CampaignDevice{ID: d.ID, Stage: stage, Status: status,
					Version: d.Version, Detail: d.Detail})
			}
		}
		out.StageProgress = append(out.StageProgress, p)
		from = to
	}
	return out
}
