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

// Audit verifies the audit chain; the store satisfies it.
type Audit interface {
	VerifyAudit(ctx context.Context) (uint64, error)
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	s, err := h.p.Status.Status(r.Context())
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (h *handler) auditVerify(w http.ResponseWriter, r *http.Request) {
	n, err := h.p.Audit.VerifyAudit(r.Context())
	out := adminapi.AuditVerify{Records: n, OK: err == nil}
	if err != nil {
		out.Error = err.Error()
	}
	writeJSON(w, http.StatusOK, out)
}
