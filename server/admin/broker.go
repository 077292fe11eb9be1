package admin

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// BrokerCA issues an external broker's TLS certificate under the current
// root (*trust.Service).
type BrokerCA interface {
	Issue(ctx context.Context, req certs.Request) (*x509.Certificate, error)
	Chain() *trust.Chain
}

// BrokerAuditor records the issue (the store).
type BrokerAuditor interface {
	Audit(ctx context.Context, events ...store.Event) error
}

// BrokerHooks answers a broker's HTTP authentication and authorization
// requests (*brokerhook.Hooks).
type BrokerHooks interface {
	Authn(w http.ResponseWriter, r *http.Request)
	Authz(w http.ResponseWriter, r *http.Request)
}

func (h *handler) brokerAuthn(w http.ResponseWriter, r *http.Request) {
	if h.p.BrokerHooks == nil {
		writeErr(w, http.StatusNotImplemented, adminapi.CodeInternal, errors.New("admin: no broker hooks here"))
		return
	}
	h.p.BrokerHooks.Authn(w, r)
}

func (h *handler) brokerAuthz(w http.ResponseWriter, r *http.Request) {
	if h.p.BrokerHooks == nil {
		writeErr(w, http.StatusNotImplemented, adminapi.CodeInternal, errors.New("admin: no broker hooks here"))
		return
	}
	h.p.BrokerHooks.Authz(w, r)
}

// brokerIdentity names external brokers' certificates. It is a server
// identity: the embedded broker, which an external broker replaces, is
// the only place that would let it in as a client. The admin API admits
// it to the broker hooks only.
var brokerIdentity = identity.Identity{Role: identity.RoleServer, Name: "broker"}

// brokerCertValidity is the life of a broker certificate: long enough to
// renew calmly, short enough that a leaked key ages out.
const brokerCertValidity = 90 * 24 * time.Hour

func (h *handler) brokerCert(w http.ResponseWriter, r *http.Request) {
	if h.p.Broker == nil {
		writeErr(w, http.StatusNotImplemented, adminapi.CodeInternal, errors.New("admin: this fleetd issues no broker certificates"))
		return
	}
	var req adminapi.BrokerCertRequest
	if err := decode(r, &req); err != nil {
		invalid(w, err)
		return
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		invalid(w, fmt.Errorf("admin: broker CSR: %w", err))
		return
	}
	if len(req.Names) == 0 {
		invalid(w, errors.New("admin: broker certificate: name at least one DNS name or IP address (--san)"))
		return
	}
	cr := certs.Request{Identity: brokerIdentity, PublicKey: csr.PublicKey, NotAfter: time.Now().Add(brokerCertValidity)}
	for _, n := range req.Names {
		if ip := net.ParseIP(n); ip != nil {
			cr.IPs = append(cr.IPs, ip)
		} else if err := protocol.ValidateDeviceID(n); err != nil || n[len(n)-1] == '.' {
			invalid(w, fmt.Errorf("admin: broker certificate: %q is no DNS name or IP address", n))
			return
		} else {
			cr.DNSNames = append(cr.DNSNames, n)
		}
	}
	leaf, err := h.p.Broker.Issue(r.Context(), cr)
	if err != nil {
		fail(w, err)
		return
	}
	chain := h.p.Broker.Chain()
	out := adminapi.BrokerCertResponse{Certificate: identity.EncodePEM(leaf), NotAfter: leaf.NotAfter}
	for _, x := range chain.Crosses() {
		out.Certificate = append(out.Certificate, identity.EncodePEM(x)...)
	}
	seen := map[string]bool{}
	for _, raw := range chain.Latest(math.MaxInt32) {
		s, err := anchors.Parse(raw)
		if err != nil {
			fail(w, fmt.Errorf("admin: anchor set: %w", err))
			return
		}
		if root, err := x509.ParseCertificate(s.Root); err == nil && !seen[string(s.Root)] {
			seen[string(s.Root)] = true
			out.CA = append(out.CA, identity.EncodePEM(root)...)
		}
	}
	if a, ok := h.p.Audit.(BrokerAuditor); ok {
		if err := a.Audit(r.Context(), store.Event{Action: "broker-cert-issued", Actor: actor(r),
			Detail: fmt.Sprintf("serial %s names %v", leaf.SerialNumber.Text(16), req.Names)}); err != nil {
			fail(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, out)
}
