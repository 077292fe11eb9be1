package admin

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/escrow"
)

// DataKeys rotates every device's data key; *escrow.Escrow satisfies it.
type DataKeys interface {
	RotateDataKeys(ctx context.Context, actor string) (escrow.Result, error)
}

// Escrow releases escrowed data keys; *escrow.Escrow satisfies it. The
// key comes back sealed (HPKE, COSE_Encrypt0) to the operator's own
// certificate key: it never crosses the wire, or reaches a log, in
// plaintext.
type Escrow interface {
	Recover(ctx context.Context, device string, version uint32, operator *x509.Certificate, actor string) (escrow.Recovery, error)
}

// maxDataKeyErrors bounds the per-device errors a rotation answer lists.
const maxDataKeyErrors = 20

func (h *handler) rotateDataKeys(w http.ResponseWriter, r *http.Request) {
	res, err := h.p.DataKeys.RotateDataKeys(r.Context(), actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	resp := adminapi.DataKeysResponse{Devices: len(res.Rotated), Failed: len(res.Failed)}
	for id, err := range res.Failed {
		if len(resp.Errors) < maxDataKeyErrors {
			resp.Errors = append(resp.Errors, id+": "+err.Error())
		}
	}
	h.log.Info("data keys rotated", "devices", resp.Devices, "failed", resp.Failed, "actor", actor(r))
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) recoverEscrow(w http.ResponseWriter, r *http.Request) {
	var req adminapi.EscrowRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	if req.Device == "" || req.Version == 0 {
		invalid(w, errors.New("admin: device and version are required"))
		return
	}
	// authenticate has checked the chain and the admin role.
	op := r.TLS.VerifiedChains[0][0]
	rec, err := h.p.Escrow.Recover(r.Context(), req.Device, req.Version, op, actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	h.log.Warn("escrowed data key released", "device", req.Device, "version", req.Version, "actor", actor(r))
	writeJSON(w, http.StatusOK, adminapi.EscrowResponse{Device: req.Device, Version: req.Version, Status: rec.Status.String(),
		Sealed: rec.Sealed, Audience: rec.Audience})
}
