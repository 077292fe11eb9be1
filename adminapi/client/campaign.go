package client

import (
	"context"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
)

// CreateCampaign creates a staged campaign; fleetd starts it at once.
func (c *Client) CreateCampaign(ctx context.Context, req adminapi.CampaignRequest) (adminapi.Campaign, error) {
	var out adminapi.Campaign
	return out, c.do(ctx, http.MethodPost, adminapi.PathCampaigns, req, &out)
}

// Campaigns lists every campaign, oldest first, without their devices.
func (c *Client) Campaigns(ctx context.Context) ([]adminapi.Campaign, error) {
	var out adminapi.CampaignList
	return out.Campaigns, c.do(ctx, http.MethodGet, adminapi.PathCampaigns, nil, &out)
}

// Campaign returns one campaign; with devices, every device's status too.
func (c *Client) Campaign(ctx context.Context, id string, devices bool) (adminapi.Campaign, error) {
	var out adminapi.Campaign
	path := adminapi.CampaignPath(id)
	if !devices {
		path += "?devices=false"
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// CampaignAction pauses, resumes, aborts or rolls back a campaign
// (adminapi.CampaignPause, ...).
func (c *Client) CampaignAction(ctx context.Context, id, action string) (adminapi.Campaign, error) {
	var out adminapi.Campaign
	return out, c.do(ctx, http.MethodPost, adminapi.CampaignActionPath(id, action), nil, &out)
}
