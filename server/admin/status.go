package admin

import (
	"context"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
)

// Status reports fleetd's counters; it gathers them from every part, so
// fleetd itself satisfies it.
type Status interface {
	Status(ctx context.Context) (adminapi.Status, error)
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	s, err := h.p.Status.Status(r.Context())
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}
