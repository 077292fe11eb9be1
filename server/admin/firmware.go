package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/server/release"
)

// Firmware publishes releases; *release.Releases satisfies it.
type Firmware interface {
	Publish(ctx context.Context, m *firmware.Manifest, actor string) (release.Info, error)
	// Stage publishes a release that is not the fleet's until a
	// firmware campaign completes with it.
	Stage(ctx context.Context, m *firmware.Manifest, actor string) (release.Info, error)
}

func (h *handler) publishFirmware(w http.ResponseWriter, r *http.Request) {
	var req adminapi.FirmwareRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	if req.Version == 0 || len(req.Digest) != 32 || req.Size == 0 || req.URI == "" {
		invalid(w, errors.New("admin: firmware needs version, 32-byte digest, size and uri"))
		return
	}
	vendor, err := firmware.ParseUUID(req.Vendor)
	if err != nil {
		invalid(w, fmt.Errorf("admin: vendor: %w", err))
		return
	}
	class, err := firmware.ParseUUID(req.Class)
	if err != nil {
		invalid(w, fmt.Errorf("admin: class: %w", err))
		return
	}
	m := &firmware.Manifest{VendorID: vendor, ClassID: class, Version: req.Version, Size: req.Size, URI: req.URI}
	copy(m.Digest[:], req.Digest)
	publish := h.p.Firmware.Publish
	if req.Staged {
		publish = h.p.Firmware.Stage
	}
	info, err := publish(r.Context(), m, actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	h.log.Info("firmware published", "version", info.Version, "staged", req.Staged, "actor", actor(r))
	writeJSON(w, http.StatusOK, adminapi.FirmwareInfo{Version: info.Version, Manifest: info.Manifest, KeyID: fmt.Sprintf("%x", info.KeyID)})
}
