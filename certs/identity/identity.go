package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Role says what a certificate's holder is allowed to be.
type Role string

// Roles.
const (
	RoleDevice Role = "device" // a device's identity (LDevID)
	RoleServer Role = "server" // fleetd: its MQTT client and TLS endpoints
	RoleAdmin  Role = "admin"  // an operator using fleetctl
	// RoleIDevID is a device's birth credential: long-lived, issued by the
	// manufacturer CA, good only for re-enrolment after the device was away
	// past every window. Never rotated.
	RoleIDevID Role = "idevid"
)

// ErrNoIdentity: a certificate carries no keyfleet identity, or two.
var ErrNoIdentity = errors.New("identity: certificate carries no keyfleet identity")

// Identity is who a certificate belongs to.
type Identity struct {
	Role Role
	Name string
}

// URI is the SAN that carries the identity: urn:keyfleet:{role}:{name}.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "keyfleet:" + string(id.Role) + ":" + id.Name}
}

func (id Identity) String() string { return string(id.Role) + ":" + id.Name }

// ParseURI parses urn:keyfleet:{role}:{name}. A URI of another scheme or
// namespace gives exactly ErrNoIdentity (Of skips those); a keyfleet URI
// without a name or with an unknown role gives ErrNoIdentity wrapped.
func ParseURI(u *url.URL) (Identity, error) {
	if u == nil || u.Scheme != "urn" {
		return Identity{}, ErrNoIdentity
	}
	rest, ok := strings.CutPrefix(u.Opaque, "keyfleet:")
	if !ok {
		return Identity{}, ErrNoIdentity
	}
	role, name, ok := strings.Cut(rest, ":")
	if !ok || name == "" {
		return Identity{}, fmt.Errorf("%w: %q", ErrNoIdentity, u.String())
	}
	switch Role(role) {
	case RoleDevice, RoleServer, RoleAdmin, RoleIDevID:
	default:
		return Identity{}, fmt.Errorf("%w: unknown role %q", ErrNoIdentity, role)
	}
	return Identity{Role: Role(role), Name: name}, nil
}

// Of returns the identity a certificate carries. It requires exactly one
// keyfleet URI SAN and a common name equal to its name.
func Of(c *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range c.URIs {
		id, err := ParseURI(u)
		if err == ErrNoIdentity { // exactly, not wrapped: some other URI
			continue
		}
		if err != nil {
			return Identity{}, err
		}
		found = append(found, id)
	}
	if len(found) != 1 {
		return Identity{}, fmt.Errorf("%w: %d identity URIs", ErrNoIdentity, len(found))
	}
	if c.Subject.CommonName != found[0].Name {
		return Identity{}, fmt.Errorf("%w: common name %q differs from %s", ErrNoIdentity, c.Subject.CommonName, found[0])
	}
	return found[0], nil
}
