package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

func (h *handler) revoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req RevokeRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if strings.TrimSpace(req.Reason) == "" {
		writeErr(w, http.StatusBadRequest, errors.New("admin: a revocation needs a reason"))
		return
	}
	resp, err := h.b.Revoke(r.Context(), id, actor(r), req.Reason)
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	h.log.Warn("device revoked", "device", id, "actor", actor(r), "took_ms", resp.TookMS)
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) anchors(w http.ResponseWriter, r *http.Request) {
	info, err := h.b.Anchors(r.Context())
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (h *handler) rotateAnchors(w http.ResponseWriter, r *http.Request) {
	var req AnchorsRotateRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	keys := req.Keys
	if len(keys) == 0 {
		keys = []string{"ca", "update"}
	}
	seen := map[string]bool{}
	for _, k := range keys {
		switch k {
		case "ca", "update", "firmware":
		default:
			writeErr(w, http.StatusBadRequest, fmt.Errorf("admin: unknown anchor key %q (ca, update, firmware)", k))
			return
		}
		if seen[k] {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("admin: anchor key %q named twice", k))
			return
		}
		seen[k] = true
	}
	info, err := h.b.RotateAnchors(r.Context(), keys, actor(r))
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	h.log.Info("trust anchors rotated", "version", info.Version, "keys", keys, "actor", actor(r))
	writeJSON(w, http.StatusOK, info)
}

func (h *handler) rotateDataKeys(w http.ResponseWriter, r *http.Request) {
	resp, err := h.b.RotateDataKeys(r.Context(), actor(r))
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	h.log.Info("data keys rotated", "devices", resp.Devices, "failed", resp.Failed, "actor", actor(r))
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) recoverEscrow(w http.ResponseWriter, r *http.Request) {
	var req EscrowRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if req.Device == "" || req.Version == 0 {
		writeErr(w, http.StatusBadRequest, errors.New("admin: device and version are required"))
		return
	}
	// authenticate has checked the chain and the admin role.
	op := r.TLS.VerifiedChains[0][0]
	resp, err := h.b.RecoverEscrow(r.Context(), req.Device, req.Version, op, actor(r))
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	h.log.Warn("escrowed data key released", "device", req.Device, "version", req.Version, "actor", actor(r))
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) publishFirmware(w http.ResponseWriter, r *http.Request) {
	var req FirmwareRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if req.Version == 0 || len(req.Digest) != 32 || req.Size == 0 || req.URI == "" {
		writeErr(w, http.StatusBadRequest, errors.New("admin: firmware needs version, 32-byte digest, size and uri"))
		return
	}
	info, err := h.b.PublishFirmware(r.Context(), req, actor(r))
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	h.log.Info("firmware published", "version", info.Version, "actor", actor(r))
	writeJSON(w, http.StatusOK, info)
}
