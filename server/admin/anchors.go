package admin

import (
	"context"
	"fmt"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Anchors reads and rotates the trust anchors; *trust.Service satisfies
// it.
type Anchors interface {
	Info() (trust.Info, error)
	Rotate(ctx context.Context, roles []string, actor string) (trust.Info, error)
}

func anchorsInfo(i trust.Info) adminapi.AnchorsInfo {
	return adminapi.AnchorsInfo{Version: i.Version, Root: i.Root, IssuedAt: i.IssuedAt,
		RootKeyID: fmt.Sprintf("%x", i.RootKeyID), UpdateKeyID: fmt.Sprintf("%x", i.UpdateKeyID), FirmwareKID: fmt.Sprintf("%x", i.FirmwareKeyID),
		Prepared: i.Prepared}
}

func (h *handler) anchors(w http.ResponseWriter, r *http.Request) {
	info, err := h.p.Anchors.Info()
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, anchorsInfo(info))
}

func (h *handler) rotateAnchors(w http.ResponseWriter, r *http.Request) {
	var req adminapi.AnchorsRotateRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	keys := req.Keys
	if len(keys) == 0 {
		keys = []string{trust.RoleCA, trust.RoleUpdate}
	}
	seen := map[string]bool{}
	for _, k := range keys {
		switch k {
		case trust.RoleCA, trust.RoleUpdate, trust.RoleFirmware:
		default:
			invalid(w, fmt.Errorf("admin: unknown anchor key %q (ca, update, firmware)", k))
			return
		}
		if seen[k] {
			invalid(w, fmt.Errorf("admin: anchor key %q named twice", k))
			return
		}
		seen[k] = true
	}
	info, err := h.p.Anchors.Rotate(r.Context(), keys, actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	h.log.Info("trust anchors rotated", "version", info.Version, "keys", keys, "actor", actor(r))
	writeJSON(w, http.StatusOK, anchorsInfo(info))
}
