package admin

import (
	"context"
	"errors"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/policyrun"
)

// Policies is the running policy; *policyrun.Service satisfies it.
type Policies interface {
	Running() *policy.Running
	Diff(ctx context.Context, name string, text []byte) (policyrun.Diff, error)
	Apply(ctx context.Context, name string, text []byte, actor string) (*policy.Running, error)
}

// maxPolicyBody bounds a policy file.
const maxPolicyBody = 1 << 20

func policyInfo(r *policy.Running) adminapi.Policy {
	out := adminapi.Policy{Version: r.Version, AppliedAt: r.AppliedAt, AppliedBy: r.AppliedBy, Rules: len(r.File.Rules),
		YAML: string(r.File.Text)}
	if len(r.File.Text) > 0 {
		out.SHA256 = r.File.SHA256()
	}
	return out
}

var errNoPolicies = errors.New("admin: this fleetd runs no policy service")

// policies answers 501 when fleetd was built without the policy service.
func (h *handler) policies(w http.ResponseWriter) bool {
	if h.p.Policies == nil {
		writeErr(w, http.StatusNotImplemented, adminapi.CodeInternal, errNoPolicies)
		return false
	}
	return true
}

func (h *handler) showPolicy(w http.ResponseWriter, _ *http.Request) {
	if !h.policies(w) {
		return
	}
	writeJSON(w, http.StatusOK, policyInfo(h.p.Policies.Running()))
}

func (h *handler) diffPolicy(w http.ResponseWriter, r *http.Request) {
	var req adminapi.PolicyRequest
	if !h.policies(w) {
		return
	}
	if err := decodeLimit(r, &req, maxPolicyBody); err != nil {
		invalid(w, err)
		return
	}
	d, err := h.p.Policies.Diff(r.Context(), req.Name, []byte(req.YAML))
	if err != nil {
		policyFail(w, err)
		return
	}
	out := adminapi.PolicyDiff{From: d.From, Changes: []adminapi.PolicyChange{}, Devices: d.Devices, Total: d.Total}
	for _, c := range d.Changes {
		out.Changes = append(out.Changes, adminapi.PolicyChange{Field: c.Field, Old: c.Old, New: c.New, Devices: c.Devices})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) applyPolicy(w http.ResponseWriter, r *http.Request) {
	var req adminapi.PolicyRequest
	if !h.policies(w) {
		return
	}
	if err := decodeLimit(r, &req, maxPolicyBody); err != nil {
		invalid(w, err)
		return
	}
	run, err := h.p.Policies.Apply(r.Context(), req.Name, []byte(req.YAML), actor(r))
	if err != nil {
		policyFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, policyInfo(run))
}

// policyFail answers an invalid file with 400 and every one of its errors.
func policyFail(w http.ResponseWriter, err error) {
	var es policy.Errors
	if errors.As(err, &es) {
		writeJSON(w, http.StatusBadRequest, adminapi.PolicyErrors{
			ErrorBody: adminapi.ErrorBody{Error: es.Error(), Code: adminapi.CodeInvalid}, Errors: es.Strings()})
		return
	}
	if errors.Is(err, policyrun.ErrNoVersions) {
		writeErr(w, http.StatusNotImplemented, adminapi.CodeInternal, err)
		return
	}
	fail(w, err)
}
