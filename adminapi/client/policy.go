package client

import (
	"context"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
)

// Policy returns the running policy.
func (c *Client) Policy(ctx context.Context) (adminapi.Policy, error) {
	var out adminapi.Policy
	return out, c.do(ctx, http.MethodGet, adminapi.PathPolicy, nil, &out)
}

// PolicyDiff asks what applying a file would change. An invalid file is
// an *APIError whose Details are its errors.
func (c *Client) PolicyDiff(ctx context.Context, req adminapi.PolicyRequest) (adminapi.PolicyDiff, error) {
	var out adminapi.PolicyDiff
	return out, c.do(ctx, http.MethodPost, adminapi.PathPolicyDiff, req, &out)
}

// ApplyPolicy makes a file the running policy. An invalid file is an
// *APIError whose Details are its errors; nothing changed.
func (c *Client) ApplyPolicy(ctx context.Context, req adminapi.PolicyRequest) (adminapi.Policy, error) {
	var out adminapi.Policy
	return out, c.do(ctx, http.MethodPost, adminapi.PathPolicyApply, req, &out)
}
