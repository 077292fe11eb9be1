package brokerhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// ServerUser is the user name of fleetd's own session: the common name of
// its certificate.
const ServerUser = "fleetd"

// Devices is what the hooks read of the store.
type Devices interface {
	GetDevice(ctx context.Context, id string) (*store.Device, error)
}

// Hooks answers a broker's authentication and authorization requests.
type Hooks struct {
	devices Devices
	topics  protocol.Topics
	log     *slog.Logger
}

// New returns the hooks over the store.
func New(devices Devices, topics protocol.Topics, log *slog.Logger) *Hooks {
	if log == nil {
		log = slog.Default()
	}
	return &Hooks{devices: devices, topics: topics, log: log}
}

// AuthnRequest is the body fleetd expects from the broker's HTTP
// authenticator (EMQX 5: ${clientid}, ${username}, ${peerhost},
// ${cert_common_name}).
type AuthnRequest struct {
	ClientID       string `json:"clientid"`
	Username       string `json:"username"`
	Password       string `json:"password,omitempty"` // unused: the certificate is the credential
	PeerHost       string `json:"peerhost"`
	CertCommonName string `json:"cert_common_name"`
}

// AuthnResponse is EMQX 5's: result allow, deny or ignore.
type AuthnResponse struct {
	Result      string `json:"result"`
	IsSuperuser bool   `json:"is_superuser"`
}

// AuthzRequest is the body fleetd expects from the broker's HTTP
// authorizer (EMQX 5: ${clientid}, ${username}, ${topic}, ${action},
// ${retain}, ${qos}).
type AuthzRequest struct {
	ClientID string   `json:"clientid"`
	Username string   `json:"username"`
	Topic    string   `json:"topic"`
	Action   string   `json:"action"` // publish or subscribe
	Retain   flexBool `json:"retain"`
}

// AuthzResponse is EMQX 5's: result allow or deny.
type AuthzResponse struct {
	Result string `json:"result"`
}

// flexBool reads a JSON boolean, or the strings "true"/"false" a template
// placeholder gives.
type flexBool bool

func (b *flexBool) UnmarshalJSON(p []byte) error {
	switch strings.Trim(string(p), `"`) {
	case "true", "1":
		*b = true
	case "false", "0", "", "null":
		*b = false
	default:
		return fmt.Errorf("brokerhook: %s is no boolean", p)
	}
	return nil
}

// Results.
const (
	Allow = "allow"
	Deny  = "deny"
)

// maxBody bounds a hook request.
const maxBody = 4 << 10

// Authn answers an authentication request.
func (h *Hooks) Authn(w http.ResponseWriter, r *http.Request) {
	var req AuthnRequest
	if !h.decode(w, r, &req) {
		return
	}
	res := Deny
	if err := h.authenticate(r.Context(), req); err != nil {
		h.log.Warn("brokerhook: connection denied", "client", req.ClientID, "user", req.Username, "peer", req.PeerHost, "err", err)
	} else {
		res = Allow
	}
	writeJSON(w, AuthnResponse{Result: res})
}

func (h *Hooks) authenticate(ctx context.Context, req AuthnRequest) error {
	name := req.Username
	if req.CertCommonName != "" && req.CertCommonName != name {
		return fmt.Errorf("user name %q is not the certificate's common name %q", name, req.CertCommonName)
	}
	if name == ServerUser {
		if req.ClientID != name && !strings.HasPrefix(req.ClientID, name+"-") {
			return errors.New("client id does not match fleetd")
		}
		return nil
	}
	if req.ClientID != name {
		return errors.New("client id differs from the device id")
	}
	return h.live(ctx, name)
}

// live checks that device is registered and not revoked.
func (h *Hooks) live(ctx context.Context, device string) error {
	if protocol.ValidateDeviceID(device) != nil {
		return fmt.Errorf("%q is no device id", device)
	}
	d, err := h.devices.GetDevice(ctx, device)
	if err != nil {
		return err
	}
	if d.Revoked {
		return errors.New("device revoked")
	}
	return nil
}

// Authz answers an authorization request.
func (h *Hooks) Authz(w http.ResponseWriter, r *http.Request) {
	var req AuthzRequest
	if !h.decode(w, r, &req) {
		return
	}
	res := Deny
	if err := h.authorize(r.Context(), req); err != nil {
		h.log.Warn("brokerhook: topic denied", "client", req.ClientID, "user", req.Username, "topic", req.Topic, "action", req.Action, "err", err)
	} else {
		res = Allow
	}
	writeJSON(w, AuthzResponse{Result: res})
}

func (h *Hooks) authorize(ctx context.Context, req AuthzRequest) error {
	var write bool
	switch req.Action {
	case "publish":
		write = true
	case "subscribe":
	default:
		return fmt.Errorf("unknown action %q", req.Action)
	}
	if req.Username == ServerUser {
		if !broker.Allowed(h.topics, identity.Identity{Role: identity.RoleServer, Name: ServerUser}, policy.AccessFull, req.Topic, write) {
			return errors.New("not a protocol topic")
		}
		return nil
	}
	if req.ClientID != req.Username {
		return errors.New("client id differs from the device id")
	}
	if write && bool(req.Retain) {
		return errors.New("retained publish")
	}
	if err := h.live(ctx, req.Username); err != nil {
		return err
	}
	// The same name may be the device's identity or its birth credential:
	// either one's topics.
	dev := identity.Identity{Role: identity.RoleDevice, Name: req.Username}
	birth := identity.Identity{Role: identity.RoleIDevID, Name: req.Username}
	if !broker.Allowed(h.topics, dev, policy.AccessFull, req.Topic, write) && !broker.Allowed(h.topics, birth, policy.AccessEnroll, req.Topic, write) {
		return errors.New("not the device's topic")
	}
	return nil
}

func (h *Hooks) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		// A body fleetd cannot read is answered deny, never ignore: an
		// ignore would let a broker without a default-deny fall through.
		h.log.Warn("brokerhook: unreadable request", "err", err)
		writeJSON(w, AuthzResponse{Result: Deny})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
