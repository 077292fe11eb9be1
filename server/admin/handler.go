package admin

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"sync"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Backend is what the API needs of fleetd.
type Backend interface {
	Provision(ctx context.Context, device string, csr, birthCSR *x509.CertificateRequest, actor string) (ProvisionResponse, error)
	ProvisionBatch(ctx context.Context, items []rotation.ProvisionItem, actor string) (BatchProvisionResponse, error)
	RequestRotation(ctx context.Context, device, actor string) (rotation.Rotation, error)
	GetDevice(ctx context.Context, id string) (*store.Device, error)
	ForEachDevice(ctx context.Context, fn func(*store.Device) error) error
	Status(ctx context.Context) (Status, error)
	VerifyAudit(ctx context.Context) (uint64, error)
	Revoke(ctx context.Context, device, actor, reason string) (RevokeResponse, error)
	RotateAnchors(ctx context.Context, keys []string, actor string) (AnchorsInfo, error)
	Anchors(ctx context.Context) (AnchorsInfo, error)
	RotateDataKeys(ctx context.Context, actor string) (DataKeysResponse, error)
	// RecoverEscrow returns the data key sealed (HPKE, COSE_Encrypt0) to
	// the operator's own certificate key: it never crosses the wire, or
	// reaches a log, in plaintext.
	RecoverEscrow(ctx context.Context, device string, version uint32, operator *x509.Certificate, actor string) (EscrowResponse, error)
	PublishFirmware(ctx context.Context, req FirmwareRequest, actor string) (FirmwareInfo, error)
}

// maxBody bounds request bodies; the largest is a provisioning CSR.
const maxBody = 64 << 10

// Handler returns the API. It trusts only connections whose verified
// client certificate carries an admin identity; the TLS listener must
// require and verify client certificates against the fleet CA.
func Handler(b Backend, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	h := &handler{b: b, log: log}
	mux.HandleFunc("GET /v1/status", h.status)
	mux.HandleFunc("GET /v1/devices", h.devices)
	mux.HandleFunc("GET /v1/devices/{id}", h.device)
	mux.HandleFunc("POST /v1/devices", h.provision)
	mux.HandleFunc("POST /v1/devices/batch", h.provisionBatch)
	mux.HandleFunc("POST /v1/rotations", h.rotate)
	mux.HandleFunc("GET /v1/audit/verify", h.auditVerify)
	mux.HandleFunc("POST /v1/devices/{id}/revoke", h.revoke)
	mux.HandleFunc("GET /v1/anchors", h.anchors)
	mux.HandleFunc("POST /v1/anchors/rotate", h.rotateAnchors)
	mux.HandleFunc("POST /v1/datakeys/rotate", h.rotateDataKeys)
	mux.HandleFunc("POST /v1/escrow/recover", h.recoverEscrow)
	mux.HandleFunc("POST /v1/firmware", h.publishFirmware)
	// Profiles for operators chasing time or memory (docs/benchmarks.md),
	// behind the same operator authentication as everything else.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return h.authenticate(mux)
}

type handler struct {
	b   Backend
	log *slog.Logger
}

type actorKey struct{}

func (h *handler) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeErr(w, http.StatusUnauthorized, errors.New("admin: client certificate required"))
			return
		}
		id, err := identity.Of(r.TLS.VerifiedChains[0][0])
		if err != nil || id.Role != identity.RoleAdmin {
			h.log.Warn("admin: refused non-admin credential", "subject", r.TLS.VerifiedChains[0][0].Subject.CommonName)
			writeErr(w, http.StatusForbidden, errors.New("admin: credential is not an operator's"))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), actorKey{}, "admin:"+id.Name)))
	})
}

func actor(r *http.Request) string { s, _ := r.Context().Value(actorKey{}).(string); return s }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// statusOf maps errors to HTTP status codes.
// ErrInvalid marks a request the backend refuses as malformed: the API
// answers 400.
var ErrInvalid = errors.New("admin: invalid request")

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid), errors.Is(err, escrow.ErrOperatorKey):
		return http.StatusBadRequest
	case errors.Is(err, escrow.ErrNoKey):
		return http.StatusNotFound
	case errors.Is(err, store.ErrNotExist):
		return http.StatusNotFound
	case errors.Is(err, store.ErrExists):
		return http.StatusConflict
	case errors.Is(err, rotation.ErrRevoked):
		return http.StatusConflict
	case errors.Is(err, protocol.ErrBadDeviceID), errors.Is(err, certs.ErrBadCSR), errors.Is(err, certs.ErrCSRIdentity):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func decode(r *http.Request, v any) error { return decodeLimit(r, v, maxBody) }

// maxBatchBody fits MaxBatch CSRs of a few hundred bytes, base64-encoded.
const maxBatchBody = 2 << 20

func decodeLimit(r *http.Request, v any, limit int64) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("admin: bad request body: %w", err)
	}
	return nil
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	s, err := h.b.Status(r.Context())
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// Summarize turns a store record into the API's summary.
func Summarize(d *store.Device) DeviceSummary {
	s := d.Slot(protocol.SlotIdentity)
	out := DeviceSummary{ID: d.ID, Revoked: d.Revoked, Desired: s.Desired, Reported: s.Reported, Created: d.CreatedAt}
	if a := s.Active(); a != nil {
		out.Active = a.Version
	}
	if l := s.Latest(); l != nil {
		out.State = l.State.String()
	}
	return out
}

// Detail turns a store record into the API's detailed view.
func Detail(d *store.Device) Device {
	out := Device{DeviceSummary: Summarize(d)}
	for slot, s := range d.Slots {
		for _, k := range s.Versions {
			out.Versions = append(out.Versions, Version{
				Slot: slot.String(), Version: k.Version, State: k.State.String(), RotationID: fmt.Sprintf("%x", k.RID),
				Serial: k.Serial, NotAfter: k.NotAfter, GraceUntil: k.GraceUntil, RequestedAt: k.RequestedAt,
				IssuedAt: k.IssuedAt, ActivatedAt: k.ActivatedAt, RetiredAt: k.RetiredAt,
			})
		}
	}
	return out
}

func (h *handler) devices(w http.ResponseWriter, r *http.Request) {
	out := []DeviceSummary{}
	if err := h.b.ForEachDevice(r.Context(), func(d *store.Device) error {
		out = append(out, Summarize(d))
		return nil
	}); err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) device(w http.ResponseWriter, r *http.Request) {
	d, err := h.b.GetDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, Detail(d))
}

func (h *handler) provision(w http.ResponseWriter, r *http.Request) {
	var req ProvisionRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	blk, _ := pem.Decode([]byte(req.CSR))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		writeErr(w, http.StatusBadRequest, errors.New("admin: csr must be a PEM CERTIFICATE REQUEST"))
		return
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("admin: csr: %w", err))
		return
	}
	var birth *x509.CertificateRequest
	if req.BirthCSR != "" {
		blk, _ := pem.Decode([]byte(req.BirthCSR))
		if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
			writeErr(w, http.StatusBadRequest, errors.New("admin: birth_csr must be a PEM CERTIFICATE REQUEST"))
			return
		}
		if birth, err = x509.ParseCertificateRequest(blk.Bytes); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("admin: birth_csr: %w", err))
			return
		}
	}
	resp, err := h.b.Provision(r.Context(), req.ID, csr, birth, actor(r))
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	h.log.Info("device provisioned", "device", req.ID, "actor", actor(r))
	writeJSON(w, http.StatusCreated, resp)
}

func (h *handler) provisionBatch(w http.ResponseWriter, r *http.Request) {
	var req BatchProvisionRequest
	if err := decodeLimit(r, &req, maxBatchBody); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if len(req.Devices) == 0 || len(req.Devices) > MaxBatch {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("admin: a batch holds 1 to %d devices, not %d", MaxBatch, len(req.Devices)))
		return
	}
	items := make([]rotation.ProvisionItem, 0, len(req.Devices))
	bad := map[int]error{}
	for i, d := range req.Devices {
		csr, err := x509.ParseCertificateRequest(d.CSR)
		if err != nil {
			bad[i] = fmt.Errorf("admin: csr: %w", err)
			csr = nil
		}
		it := rotation.ProvisionItem{ID: d.ID, CSR: csr}
		if len(d.BirthCSR) > 0 {
			if it.BirthCSR, err = x509.ParseCertificateRequest(d.BirthCSR); err != nil {
				bad[i] = fmt.Errorf("admin: birth_csr: %w", err)
			}
		}
		items = append(items, it)
	}
	// Items with unparseable CSRs are answered here, the rest by fleetd.
	var good []rotation.ProvisionItem
	var goodIdx []int
	for i, it := range items {
		if bad[i] == nil {
			good = append(good, it)
			goodIdx = append(goodIdx, i)
		}
	}
	resp, err := h.b.ProvisionBatch(r.Context(), good, actor(r))
	if err != nil {
		writeErr(w, statusOf(err), err)
		return
	}
	results := make([]BatchResult, len(items))
	for i, d := range req.Devices {
		results[i] = BatchResult{ID: d.ID}
		if bad[i] != nil {
			results[i].Error = bad[i].Error()
		}
	}
	for k, i := range goodIdx {
		results[i] = resp.Results[k]
	}
	resp.Results = results
	h.log.Info("devices provisioned in a batch", "count", len(items), "actor", actor(r))
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) rotate(w http.ResponseWriter, r *http.Request) {
	var req RotateRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if req.All == (len(req.Devices) > 0) {
		writeErr(w, http.StatusBadRequest, errors.New("admin: name devices or all, not both or neither"))
		return
	}
	ids := req.Devices
	if req.All {
		if err := h.b.ForEachDevice(r.Context(), func(d *store.Device) error {
			if !d.Revoked {
				ids = append(ids, d.ID)
			}
			return nil
		}); err != nil {
			writeErr(w, statusOf(err), err)
			return
		}
	}
	if len(ids) == 1 {
		rot, err := h.b.RequestRotation(r.Context(), ids[0], actor(r))
		if err != nil {
			writeErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, RotateResponse{Rotations: []Rotation{toRotation(ids[0], rot, nil)}})
		return
	}
	// Many devices: request in parallel so that the store's group commits
	// fill; one fsync then serves many devices.
	resp := RotateResponse{Rotations: make([]Rotation, len(ids))}
	sem := make(chan struct{}, rotateParallelism)
	var wg sync.WaitGroup
	for i, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			rot, err := h.b.RequestRotation(r.Context(), id, actor(r))
			resp.Rotations[i] = toRotation(id, rot, err)
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, resp)
}

// rotateParallelism bounds concurrent rotation requests of one API call.
const rotateParallelism = 64

func toRotation(id string, rot rotation.Rotation, err error) Rotation {
	if err != nil {
		return Rotation{Device: id, Error: err.Error()}
	}
	return Rotation{Device: id, Slot: rot.Slot.String(), Version: rot.Version, RotationID: fmt.Sprintf("%x", rot.RID), Existing: rot.Existing}
}

func (h *handler) auditVerify(w http.ResponseWriter, r *http.Request) {
	n, err := h.b.VerifyAudit(r.Context())
	out := AuditVerify{Records: n, OK: err == nil}
	if err != nil {
		out.Error = err.Error()
	}
	writeJSON(w, http.StatusOK, out)
}
