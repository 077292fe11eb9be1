package admin

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"net/http"
	"slices"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/provisioning"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Devices reads device records; the store satisfies it.
type Devices interface {
	GetDevice(ctx context.Context, id string) (*store.Device, error)
	ForEachDevice(ctx context.Context, fn func(*store.Device) error) error
}

// Provisioner registers devices; *provisioning.Station satisfies it.
type Provisioner interface {
	Provision(ctx context.Context, device string, csr, birthCSR *x509.CertificateRequest, actor string) (provisioning.Credential, error)
	ProvisionBatch(ctx context.Context, items []rotation.ProvisionItem, actor string) []provisioning.Result
	Bundle() (provisioning.Bundle, error)
}

// summarize turns a store record into the API's summary.
func summarize(d *store.Device) adminapi.DeviceSummary {
	s := d.Slot(protocol.SlotIdentity)
	var latest string // the state name of the newest version, for display
	if l := s.Latest(); l != nil {
		latest = l.State.String()
	}
	out := adminapi.DeviceSummary{ID: d.ID, Revoked: d.Revoked, Desired: s.Desired, Reported: s.Reported, Created: d.CreatedAt,
		State: latest, Model: d.Model, Labels: d.Labels}
	if a := s.Active(); a != nil {
		out.Active = a.Version
	}
	return out
}

// detail turns a store record into the API's detailed view: every slot,
// and whether the device is connected now.
func (h *handler) detail(d *store.Device) adminapi.Device {
	out := adminapi.Device{DeviceSummary: summarize(d), Anchors: d.Anchors, Firmware: d.Firmware, LastSeen: d.LastSeen,
		Connection: h.connection(d.ID), FirmwarePin: d.FirmwarePin, DataPrimary: d.DataPrimary}
	for _, k := range d.DataKeys {
		out.DataKeys = append(out.DataKeys, adminapi.DataKeyVersion{Version: k.Version, Status: k.Status.String(),
			CreatedAt: k.CreatedAt, RetiredAt: k.RetiredAt})
	}
	for _, slot := range slices.Sorted(maps.Keys(d.Slots)) {
		s := d.Slots[slot]
		for _, k := range s.Versions {
			out.Versions = append(out.Versions, adminapi.Version{
				Slot: slot.String(), Version: k.Version, State: k.State.String(), RotationID: fmt.Sprintf("%x", k.RID),
				Serial: k.Serial, NotAfter: k.NotAfter, GraceUntil: k.GraceUntil, RequestedAt: k.RequestedAt,
				IssuedAt: k.IssuedAt, ActivatedAt: k.ActivatedAt, RetiredAt: k.RetiredAt,
			})
		}
	}
	return out
}

func (h *handler) devices(w http.ResponseWriter, r *http.Request) {
	sel, err := inventory.ParseSelector(r.URL.Query().Get(adminapi.QuerySelector))
	if err != nil {
		invalid(w, err)
		return
	}
	out := []adminapi.DeviceSummary{}
	if err := h.p.Devices.ForEachDevice(r.Context(), func(d *store.Device) error {
		if sel.Matches(d) {
			out = append(out, summarize(d))
		}
		return nil
	}); err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) device(w http.ResponseWriter, r *http.Request) {
	d, err := h.p.Devices.GetDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.detail(d))
}

// parseCSR reads a PEM CERTIFICATE REQUEST; field names it in errors.
func parseCSR(field, s string) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("admin: %s must be a PEM CERTIFICATE REQUEST", field)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("admin: %s: %w", field, err)
	}
	return csr, nil
}

// bundlePEM is the trust material in the wire's PEM form.
func bundlePEM(b provisioning.Bundle) (ca, update string, err error) {
	upd, err := trust.PublicKeyPEM(b.UpdateKey)
	if err != nil {
		return "", "", fmt.Errorf("admin: update key: %w", err)
	}
	return string(identity.EncodePEM(b.Root)), string(upd), nil
}

func (h *handler) provision(w http.ResponseWriter, r *http.Request) {
	var req adminapi.ProvisionRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	csr, err := parseCSR("csr", req.CSR)
	if err != nil {
		invalid(w, err)
		return
	}
	var birth *x509.CertificateRequest
	if req.BirthCSR != "" {
		if birth, err = parseCSR("birth_csr", req.BirthCSR); err != nil {
			invalid(w, err)
			return
		}
	}
	inv, err := registration(req.Labels, req.Model)
	if err != nil {
		invalid(w, err)
		return
	}
	cred, err := h.p.Provision.Provision(r.Context(), req.ID, csr, birth, actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	if !inv.Empty() {
		// A second, audited write: the labels were checked above, so only
		// a failing store can leave the device registered without them.
		if _, err := h.p.Inventory.Label(r.Context(), req.ID, inv, actor(r)); err != nil {
			fail(w, fmt.Errorf("admin: device %s registered, its labels not recorded (set them with fleetctl device label): %w", req.ID, err))
			return
		}
	}
	b, err := h.p.Provision.Bundle()
	if err != nil {
		fail(w, err)
		return
	}
	resp := adminapi.ProvisionResponse{ID: req.ID, Cert: string(identity.EncodePEM(cred.Cert)), Broker: b.Broker, Anchors: b.Anchors}
	if resp.CA, resp.UpdateKey, err = bundlePEM(b); err != nil {
		fail(w, err)
		return
	}
	if cred.Birth != nil {
		resp.Birth = string(identity.EncodePEM(cred.Birth))
	}
	h.log.Info("device provisioned", "device", req.ID, "actor", actor(r))
	writeJSON(w, http.StatusCreated, resp)
}

func (h *handler) provisionBatch(w http.ResponseWriter, r *http.Request) {
	var req adminapi.BatchProvisionRequest
	if err := decodeLimit(r, &req, maxBatchBody); err != nil {
		invalid(w, err)
		return
	}
	if len(req.Devices) == 0 || len(req.Devices) > adminapi.MaxBatch {
		invalid(w, fmt.Errorf("admin: a batch holds 1 to %d devices, not %d", adminapi.MaxBatch, len(req.Devices)))
		return
	}
	b, err := h.p.Provision.Bundle()
	if err != nil {
		fail(w, err)
		return
	}
	resp := adminapi.BatchProvisionResponse{Broker: b.Broker, Anchors: b.Anchors, Results: make([]adminapi.BatchResult, len(req.Devices))}
	if resp.CA, resp.UpdateKey, err = bundlePEM(b); err != nil {
		fail(w, err)
		return
	}
	// Items with unparseable CSRs are answered here, the rest by the
	// station.
	var good []rotation.ProvisionItem
	var goodIdx []int
	for i, d := range req.Devices {
		resp.Results[i].ID = d.ID
		inv, err := registration(d.Labels, d.Model)
		if err != nil {
			resp.Results[i].Error = err.Error()
			continue
		}
		var rec store.Device // the labels and model as the record keeps them
		if _, err := inventory.Apply(&rec, inv); err != nil {
			resp.Results[i].Error = err.Error()
			continue
		}
		it := rotation.ProvisionItem{ID: d.ID, Labels: rec.Labels, Model: rec.Model}
		if it.CSR, err = x509.ParseCertificateRequest(d.CSR); err != nil {
			resp.Results[i].Error = fmt.Errorf("admin: csr: %w", err).Error()
			continue
		}
		if len(d.BirthCSR) > 0 {
			if it.BirthCSR, err = x509.ParseCertificateRequest(d.BirthCSR); err != nil {
				resp.Results[i].Error = fmt.Errorf("admin: birth_csr: %w", err).Error()
				continue
			}
		}
		good, goodIdx = append(good, it), append(goodIdx, i)
	}
	for k, res := range h.p.Provision.ProvisionBatch(r.Context(), good, actor(r)) {
		out := &resp.Results[goodIdx[k]]
		switch {
		case res.Err != nil:
			out.Error = res.Err.Error()
		default:
			out.Cert = res.Cert.Raw
			if res.Birth != nil {
				out.Birth = res.Birth.Raw
			}
		}
	}
	h.log.Info("devices provisioned in a batch", "count", len(req.Devices), "actor", actor(r))
	writeJSON(w, http.StatusOK, resp)
}
