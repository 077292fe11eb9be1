package admin

import (
	"context"
	"fmt"
	"net/http"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/store"
)

// Labeler changes a device's labels and model, durably and audited;
// *inventory.Labeler satisfies it.
type Labeler interface {
	Label(ctx context.Context, id string, c inventory.Change, actor string) (*store.Device, error)
}

// Sessions tells whether a device has a live MQTT session; the embedded
// broker satisfies it. With an external broker fleetd cannot tell.
// `device show` reports it, and `fleetctl rotate --wait` uses it to tell a
// rotation that is slow from a device that is away.
type Sessions interface {
	Present(device string) bool
}

// connection is the device's connection state for the API.
func (h *handler) connection(device string) string {
	switch {
	case h.p.Sessions == nil:
		return adminapi.ConnectionUnknown
	case h.p.Sessions.Present(device):
		return adminapi.ConnectionUp
	}
	return adminapi.ConnectionDown
}

func (h *handler) label(w http.ResponseWriter, r *http.Request) {
	var req adminapi.LabelRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	c := inventory.Change{Set: req.Set, Remove: req.Remove}
	if c.Empty() {
		invalid(w, fmt.Errorf("admin: no label to set or remove"))
		return
	}
	d, err := h.p.Inventory.Label(r.Context(), r.PathValue("id"), c, actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	h.log.Info("device labels changed", "device", d.ID, "actor", actor(r))
	writeJSON(w, http.StatusOK, h.detail(d))
}

// registration is the inventory a registration asks to record, checked
// before anything is issued: a model given both ways must agree.
func registration(labels map[string]string, model string) (inventory.Change, error) {
	c := inventory.Change{Set: map[string]string{}}
	for k, v := range labels {
		c.Set[k] = v
	}
	if model != "" {
		if m, ok := c.Set[inventory.ModelKey]; ok && m != model {
			return inventory.Change{}, fmt.Errorf("admin: model %q and label model=%s disagree", model, m)
		}
		c.Set[inventory.ModelKey] = model
	}
	return c, c.Validate()
}
