package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/release"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Parts are what the API serves, one small interface per area. Every
// field is required but Sessions (nil: connections are unknown, as with an
// external broker) and Campaigns (nil: the store keeps none; the API
// answers 501).
type Parts struct {
	Devices   Devices
	Provision Provisioner
	Rotations Rotations
	Revoker   Revoker
	Anchors   Anchors
	DataKeys  DataKeys
	Escrow    Escrow
	Firmware  Firmware
	Status    Status
	Audit     Audit
	Inventory Labeler
	// Campaigns creates and steers staged campaigns.
	Campaigns Campaigns
	// Policies is the running policy, its diff and apply.
	Policies Policies
	// Broker issues external brokers' TLS certificates; nil: not offered.
	Broker BrokerCA
	// BrokerHooks answers external brokers' HTTP authentication and
	// authorization requests; nil: not offered.
	BrokerHooks BrokerHooks
	// Sessions tells whether a device is connected; nil when fleetd
	// cannot tell (an external broker): device show then says "unknown"
	// and rotation progress says nothing of it.
	Sessions Sessions
}

// Handler returns the API. It trusts only connections whose verified
// client certificate carries an admin identity; the TLS listener must
// require and verify client certificates against the fleet CA.
func Handler(p Parts, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	h := &handler{p: p, log: log}
	for _, r := range []struct {
		method, path string
		fn           http.HandlerFunc
	}{
		{"GET", adminapi.PathStatus, h.status},
		{"GET", adminapi.PathDevices, h.devices},
		{"GET", adminapi.PathDevices + "/{id}", h.device},
		{"POST", adminapi.PathDevices, h.provision},
		{"POST", adminapi.PathDevicesBatch, h.provisionBatch},
		{"POST", adminapi.PathDevices + "/{id}/revoke", h.revoke},
		{"POST", adminapi.PathDevices + "/{id}/labels", h.label},
		{"POST", adminapi.PathRotations, h.rotate},
		{"POST", adminapi.PathRotationsProgress, h.rotationProgress},
		{"GET", adminapi.PathAuditVerify, h.auditVerify},
		{"GET", adminapi.PathAudit, h.auditList},
		{"GET", adminapi.PathAuditExport, h.auditExport},
		{"GET", adminapi.PathAnchors, h.anchors},
		{"POST", adminapi.PathAnchorsRotate, h.rotateAnchors},
		{"POST", adminapi.PathDataKeysRotate, h.rotateDataKeys},
		{"POST", adminapi.PathEscrowRecover, h.recoverEscrow},
		{"POST", adminapi.PathFirmware, h.publishFirmware},
		{"GET", adminapi.PathPolicy, h.showPolicy},
		{"POST", adminapi.PathPolicyDiff, h.diffPolicy},
		{"POST", adminapi.PathPolicyApply, h.applyPolicy},
		{"POST", adminapi.PathCampaigns, h.createCampaign},
		{"GET", adminapi.PathCampaigns, h.listCampaigns},
		{"GET", adminapi.PathCampaigns + "/{id}", h.showCampaign},
		{"POST", adminapi.PathCampaigns + "/{id}/{action}", h.campaignAction},
		{"POST", adminapi.PathBrokerCert, h.brokerCert},
		{"POST", adminapi.PathBrokerAuthn, h.brokerAuthn},
		{"POST", adminapi.PathBrokerAuthz, h.brokerAuthz},
	} {
		mux.HandleFunc(r.method+" "+r.path, r.fn)
	}
	// Profiles for operators chasing time or memory (docs/benchmarks.md),
	// behind the same operator authentication as everything else.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return h.authenticate(mux)
}

type handler struct {
	p   Parts
	log *slog.Logger
}

type actorKey struct{}

func (h *handler) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeErr(w, http.StatusUnauthorized, adminapi.CodeUnauthenticated, errors.New("admin: client certificate required"))
			return
		}
		id, err := identity.Of(r.TLS.VerifiedChains[0][0])
		if err == nil && id == brokerIdentity && (r.URL.Path == adminapi.PathBrokerAuthn || r.URL.Path == adminapi.PathBrokerAuthz) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), actorKey{}, id.String())))
			return
		}
		if err != nil || id.Role != identity.RoleAdmin {
			h.log.Warn("admin: refused non-admin credential", "subject", r.TLS.VerifiedChains[0][0].Subject.CommonName)
			writeErr(w, http.StatusForbidden, adminapi.CodeForbidden, errors.New("admin: credential is not an operator's"))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), actorKey{}, "admin:"+id.Name)))
	})
}

func actor(r *http.Request) string { s, _ := r.Context().Value(actorKey{}).(string); return s }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code string, err error) {
	writeJSON(w, status, adminapi.ErrorBody{Error: message(err), Code: code})
}

// message is err as an operator reads it: the store's sentinels say
// "store: does not exist" for what the operator knows as a device not
// found, so they are put in the request's words.
func message(err error) string {
	msg := err.Error()
	for _, s := range []struct {
		sentinel error
		words    string
	}{{store.ErrNotExist, "not found"}, {store.ErrExists, "already exists"}} {
		if errors.Is(err, s.sentinel) {
			if m, ok := strings.CutSuffix(msg, ": "+s.sentinel.Error()); ok {
				return m + " " + s.words
			}
		}
	}
	return msg
}

// invalid answers 400 for a request refused before any part saw it.
func invalid(w http.ResponseWriter, err error) {
	writeErr(w, http.StatusBadRequest, adminapi.CodeInvalid, err)
}

// fail answers with the status and code err maps to.
func fail(w http.ResponseWriter, err error) {
	status, code := statusOf(err)
	writeErr(w, status, code, err)
}

// statusOf maps the parts' errors to HTTP status codes and API error
// codes: the one place that does.
func statusOf(err error) (int, string) {
	switch {
	case errors.Is(err, release.ErrInvalid), errors.Is(err, escrow.ErrOperatorKey), errors.Is(err, inventory.ErrInvalid), errors.Is(err, campaign.ErrInvalid), errors.Is(err, policy.ErrInvalid),
		errors.Is(err, protocol.ErrBadDeviceID), errors.Is(err, certs.ErrBadCSR), errors.Is(err, certs.ErrCSRIdentity):
		return http.StatusBadRequest, adminapi.CodeInvalid
	case errors.Is(err, escrow.ErrNoKey), errors.Is(err, store.ErrNotExist):
		return http.StatusNotFound, adminapi.CodeNotFound
	case errors.Is(err, store.ErrExists):
		return http.StatusConflict, adminapi.CodeExists
	case errors.Is(err, rotation.ErrAlreadyRevoked):
		return http.StatusConflict, adminapi.CodeAlreadyRevoked
	case errors.Is(err, rotation.ErrRevoked):
		return http.StatusConflict, adminapi.CodeRevoked
	}
	return http.StatusInternalServerError, adminapi.CodeInternal
}

// maxBody bounds request bodies; the largest is a provisioning CSR.
const maxBody = 64 << 10

// maxBatchBody fits MaxBatch CSRs of a few hundred bytes, base64-encoded.
const maxBatchBody = 2 << 20

func decode(r *http.Request, v any) error { return decodeLimit(r, v, maxBody) }

func decodeLimit(r *http.Request, v any, limit int64) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("admin: bad request body: %w", err)
	}
	return nil
}
