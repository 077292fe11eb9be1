package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Rotations requests identity rotations; *rotation.Engine satisfies it.
type Rotations interface {
	RequestRotation(ctx context.Context, device, actor string) (rotation.Rotation, error)
}

// Revoker revokes devices; *rotation.Engine satisfies it. It returns how
// long it took until the broker had dropped the device's sessions.
type Revoker interface {
	Revoke(ctx context.Context, device, actor, reason string) (time.Duration, error)
}

// rotateParallelism bounds concurrent rotation requests of one API call.
const rotateParallelism = 64

func (h *handler) rotate(w http.ResponseWriter, r *http.Request) {
	var req adminapi.RotateRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	if req.All == (len(req.Devices) > 0) {
		invalid(w, errors.New("admin: name devices or all, not both or neither"))
		return
	}
	ids := req.Devices
	if req.All {
		if err := h.p.Devices.ForEachDevice(r.Context(), func(d *store.Device) error {
			if !d.Revoked {
				ids = append(ids, d.ID)
			}
			return nil
		}); err != nil {
			fail(w, err)
			return
		}
	}
	if len(ids) == 1 {
		rot, err := h.p.Rotations.RequestRotation(r.Context(), ids[0], actor(r))
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, adminapi.RotateResponse{Rotations: []adminapi.Rotation{toRotation(ids[0], rot, nil)}})
		return
	}
	// Many devices: request in parallel so that the store's group commits
	// fill; one fsync then serves many devices.
	resp := adminapi.RotateResponse{Rotations: make([]adminapi.Rotation, len(ids))}
	sem := make(chan struct{}, rotateParallelism)
	var wg sync.WaitGroup
	for i, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			rot, err := h.p.Rotations.RequestRotation(r.Context(), id, actor(r))
			resp.Rotations[i] = toRotation(id, rot, err)
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, resp)
}

func toRotation(id string, rot rotation.Rotation, err error) adminapi.Rotation {
	if err != nil {
		return adminapi.Rotation{Device: id, Error: err.Error()}
	}
	return adminapi.Rotation{Device: id, Slot: rot.Slot.String(), Version: rot.Version, RotationID: fmt.Sprintf("%x", rot.RID), Existing: rot.Existing}
}

func (h *handler) revoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req adminapi.RevokeRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	if strings.TrimSpace(req.Reason) == "" {
		invalid(w, errors.New("admin: a revocation needs a reason"))
		return
	}
	took, err := h.p.Revoker.Revoke(r.Context(), id, actor(r), req.Reason)
	if err != nil {
		fail(w, err)
		return
	}
	resp := adminapi.RevokeResponse{Device: id, TookMS: float64(took.Microseconds()) / 1000}
	h.log.Warn("device revoked", "device", id, "actor", actor(r), "took_ms", resp.TookMS)
	writeJSON(w, http.StatusOK, resp)
}
