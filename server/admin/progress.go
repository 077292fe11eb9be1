package admin

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/protocol"
)

func (h *handler) rotationProgress(w http.ResponseWriter, r *http.Request) {
	var req adminapi.ProgressRequest
	if err := decodeLimit(r, &req, maxBatchBody); err != nil {
		invalid(w, err)
		return
	}
	if len(req.Rotations) > adminapi.MaxProgress {
		invalid(w, fmt.Errorf("admin: %d rotations asked for, at most %d per request", len(req.Rotations), adminapi.MaxProgress))
		return
	}
	if len(req.Rotations) == 0 {
		invalid(w, errors.New("admin: name at least one rotation"))
		return
	}
	out := adminapi.ProgressResponse{Rotations: make([]adminapi.RotationProgress, len(req.Rotations))}
	for i, ref := range req.Rotations {
		p := adminapi.RotationProgress{Device: ref.Device, Version: ref.Version}
		if h.p.Sessions != nil {
			c := h.p.Sessions.Present(ref.Device)
			p.Connected = &c
		}
		d, err := h.p.Devices.GetDevice(r.Context(), ref.Device)
		switch {
		case err != nil:
			p.Error = message(err)
		case d.Revoked:
			p.State = "revoked"
		default:
			if k := d.Slot(protocol.SlotIdentity).Version(ref.Version); k != nil {
				p.State = k.State.String()
			} else {
				p.Error = fmt.Sprintf("device %s has no identity version %d", ref.Device, ref.Version)
			}
		}
		out.Rotations[i] = p
	}
	writeJSON(w, http.StatusOK, out)
}
