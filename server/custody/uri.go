package custody

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/keyfleet/keyfleet/internal/p11uri"

	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Roles of fleetd's HSM keys, as --key-uri ROLE=URI names them. Each role
// has the label fleetd's parts ask custody for (Role.Label); a URI moves
// that key to another token or label without the parts knowing.
const (
	RoleCA                = "ca"
	RoleUpdate            = "update"
	RoleFirmware          = "firmware"
	RoleEscrowKEK         = "escrow-kek"
	RoleBirthCA           = "birth-ca"
	RoleStepCAProvisioner = "stepca-provisioner"
)

// LabelStepCAProvisioner is the label of the key that signs step-ca
// provisioner tokens, for the step-ca issuer.
const LabelStepCAProvisioner = "keyfleet-stepca-provisioner"

// Role is one key fleetd holds: its --key-uri name and the label its
// users ask for. Keys made later in the role (an anchor rotation's
// "keyfleet-ca-v2") follow it into its token, as "OBJECT-v2".
type Role struct {
	Name, Label string
}

// Roles lists every role in the order the docs give them.
func Roles() []Role {
	return []Role{
		{RoleCA, trust.LabelCA},
		{RoleUpdate, trust.LabelUpdate},
		{RoleFirmware, trust.LabelFirmware},
		{RoleEscrowKEK, escrow.KEKLabel},
		{RoleBirthCA, trust.LabelBirthCA},
		{RoleStepCAProvisioner, LabelStepCAProvisioner},
	}
}

func roleNames() []string {
	var names []string
	for _, r := range Roles() {
		names = append(names, r.Name)
	}
	return names
}

// Path and query attributes a key URI may carry. fleetd finds a token by
// its label and a key by its label, so other RFC 7512 attributes (id,
// serial, slot-id, ...) are refused rather than silently ignored: a typo
// must not select another key.
var (
	pathAttrs  = []string{"token", "object", "type"}
	queryAttrs = []string{"module-path", "pin-source", "pin-value"}
)

// KeyURIError is a refused key URI: the role it was given for and the
// problem, so that a caller can say where that role's URI was written.
type KeyURIError struct {
	Role, Msg string
}

func (e *KeyURIError) Error() string { return "custody: key uri " + e.Role + ": " + e.Msg }

// ParseKeyURI reads an RFC 7512 URI of role's key, such as
//
//	pkcs11:token=fleet;object=ca-2026?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/credentials/fleetd/pin
//
// with go.step.sm/crypto/kms/uri. A URI without module-path takes def's
// module, without pin-source or pin-value def's PIN. It reads the PIN
// source and checks that the module exists, so that a bad URI is refused
// before fleetd opens or starts anything. Errors name the role and never
// carry the URI itself, which may hold a pin-value.
func ParseKeyURI(role, raw string, def hsm.Config) (hsm.KeyPlace, error) {
	fail := func(format string, a ...any) (hsm.KeyPlace, error) {
		return hsm.KeyPlace{}, &KeyURIError{Role: role, Msg: fmt.Sprintf(format, a...)}
	}
	if !slices.Contains(roleNames(), role) {
		return fail("unknown role (want one of %s)", strings.Join(roleNames(), ", "))
	}
	u, err := p11uri.Parse(raw, pathAttrs, queryAttrs)
	if err != nil {
		return fail("%v", err)
	}
	place := hsm.KeyPlace{Token: hsm.Config{Module: def.Module, PIN: def.PIN, MaxSessions: def.MaxSessions},
		Object: u.Path.Get("object")}
	place.Token.TokenLabel = u.Path.Get("token")
	switch {
	case place.Token.TokenLabel == "":
		return fail("missing token= (the token's label)")
	case place.Object == "":
		return fail("missing object= (the key's label)")
	}
	want := "private"
	if role == RoleEscrowKEK {
		want = "secret-key"
	}
	if t := u.Path.Get("type"); t != "" && t != want {
		return fail("type=%s, but this key is type=%s", t, want)
	}
	if m := u.Query.Get("module-path"); m != "" {
		place.Token.Module = m
	}
	if place.Token.Module == "" {
		return fail("no module-path, and no default module (--pkcs11-module)")
	}
	if err := p11uri.CheckModule(place.Token.Module); err != nil {
		return fail("%v", err)
	}
	pin, err := u.PIN()
	if err != nil {
		return fail("%v", err)
	}
	if pin != "" {
		place.Token.PIN = hsm.PIN(pin)
	}
	if place.Token.PIN == "" {
		return fail("no PIN: add pin-source=file:PATH, or give --pin-file or KEYFLEET_HSM_PIN")
	}
	return place, nil
}

// ParseKeyURIs reads --key-uri values, each "ROLE=URI", into the places of
// def.Keys and returns def with them. Every bad entry is reported (joined),
// a role named twice among them. Roles without a URI keep their usual
// label in def's token or, when def has no PIN (every key has a URI with
// its own PIN source), in the CA's token; the returned Config's own token
// is that one, so fleetd's checks of a token still hold.
func ParseKeyURIs(entries []string, def hsm.Config) (hsm.Config, error) {
	if len(entries) == 0 {
		return def, nil
	}
	places := map[string]hsm.KeyPlace{}
	var errs []error
	for _, e := range entries {
		role, raw, ok := strings.Cut(e, "=")
		role = strings.TrimSpace(role)
		if !ok || role == "" || strings.ContainsAny(role, ":;?/") {
			errs = append(errs, errors.New("custody: key uri: want ROLE=URI (role one of "+strings.Join(roleNames(), ", ")+")"))
			continue
		}
		if _, dup := places[role]; dup {
			errs = append(errs, &KeyURIError{Role: role, Msg: "role named twice"})
			continue
		}
		p, err := ParseKeyURI(role, strings.TrimSpace(raw), def)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		places[role] = p
	}
	if len(errs) > 0 {
		return def, errors.Join(errs...)
	}
	fallback := hsm.Config{Module: def.Module, TokenLabel: def.TokenLabel, PIN: def.PIN, MaxSessions: def.MaxSessions}
	if fallback.Module == "" || fallback.TokenLabel == "" || fallback.PIN == "" {
		ca, ok := places[RoleCA]
		if !ok {
			return def, errors.New("custody: key uri: no default token (--pin-file or KEYFLEET_HSM_PIN) and no ca key uri to hold the keys given none")
		}
		fallback = ca.Token
	}
	for _, r := range Roles() {
		if _, ok := places[r.Name]; !ok {
			places[r.Name] = hsm.KeyPlace{Token: fallback, Object: r.Label}
		}
	}
	if err := checkPlaces(places); err != nil {
		return def, err
	}
	def.Module, def.TokenLabel, def.PIN = fallback.Module, fallback.TokenLabel, fallback.PIN
	def.Keys = places
	return def, nil
}

// checkPlaces refuses two roles on one key, and one token reached with two
// PINs (custody opens each token once).
func checkPlaces(places map[string]hsm.KeyPlace) error {
	keys, pins := map[[3]string]string{}, map[[2]string]hsm.PIN{}
	var errs []error
	for _, r := range Roles() {
		p := places[r.Name]
		tok := [2]string{p.Token.Module, p.Token.TokenLabel}
		if other, ok := keys[[3]string{tok[0], tok[1], p.Object}]; ok {
			errs = append(errs, &KeyURIError{Role: r.Name, Msg: fmt.Sprintf("names the same key as %s (token %q, object %q)", other, tok[1], p.Object)})
		}
		keys[[3]string{tok[0], tok[1], p.Object}] = r.Name
		if pin, ok := pins[tok]; ok && pin != p.Token.PIN {
			errs = append(errs, &KeyURIError{Role: r.Name, Msg: fmt.Sprintf("token %q is given another PIN than for the other keys in it", tok[1])})
		}
		pins[tok] = p.Token.PIN
	}
	return errors.Join(errs...)
}

// Tokens lists the distinct tokens cfg's keys live in (cfg's own alone
// when it places none), for fleetd init --create-token.
func Tokens(cfg hsm.Config) []hsm.Config {
	if len(cfg.Keys) == 0 {
		return []hsm.Config{cfg}
	}
	var out []hsm.Config
	seen := map[[2]string]bool{}
	for _, r := range Roles() {
		t := cfg.Keys[r.Name].Token
		if id := [2]string{t.Module, t.TokenLabel}; !seen[id] {
			seen[id] = true
			out = append(out, t)
		}
	}
	return out
}
