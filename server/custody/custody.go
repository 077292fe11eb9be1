// Package custody opens the store of fleetd's private keys: a PKCS#11
// token (package hsm), or, only where no PKCS#11 module exists at all,
// software keys in files.
//
// # Basics
//
// Open returns Keys, the one interface fleetd's parts take their keys
// from: the signing keys of the trust anchors and the birth CA (by label)
// and the escrow's key-encryption key.
//
// Each key has a role (Roles: ca, update, firmware, escrow-kek, birth-ca,
// stepca-provisioner) and a usual label in the one token fleetd is given.
// An operator may place any of them elsewhere with an RFC 7512 URI
// (ParseKeyURI, ParseKeyURIs: --key-uri ROLE=URI): another token, another
// module, another label. fleetd's parts keep asking for the usual labels;
// Open's router sends each to its place, and keys a rotation makes later
// in a role ("keyfleet-ca-v2") into the role's token as "OBJECT-v2".
//
// # Caveats
//
// Soft keys are readable by anyone who reads their directory: Open logs a
// warning every time it opens them.
package custody

import (
	"io"
	"log/slog"

	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Keys is what fleetd needs of a key store. Implementations are safe for
// concurrent use.
type Keys interface {
	trust.Keys // the signing keys (CA, update, firmware, birth CA)
	escrow.HSM // the escrow's key-encryption key and data keys
	// URI names a key for logs (a PKCS#11 URI for a token).
	URI(label string) string
	// Ops counts private-key operations so far.
	Ops() uint64
	io.Closer
}

var (
	_ Keys = (*hsm.Token)(nil)
	_ Keys = (*hsm.SoftKeys)(nil)
	_ Keys = (*router)(nil)
)

// Open opens the token cfg names or, with insecureSoftDir set, the soft
// keys in that directory instead. With cfg.Keys (ParseKeyURIs), it opens
// every token they name, once each, and sends each key to its place.
func Open(cfg hsm.Config, insecureSoftDir string, log *slog.Logger) (Keys, error) {
	if insecureSoftDir != "" {
		log.Warn("INSECURE: CA and update-signing keys are software keys in files; anyone who reads "+
			insecureSoftDir+" can impersonate the fleet. Use a PKCS#11 token in production.",
			slog.Bool("insecure_soft_keys", true))
		k, err := hsm.OpenSoftKeys(insecureSoftDir)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return k, nil
	}
	if len(cfg.Keys) > 0 {
		r, err := openRouter(cfg)
		if err != nil {
			return nil, err
		}
		for _, role := range Roles() {
			log.Info("key placed by URI", "role", role.Name, "uri", r.URI(role.Label))
		}
		return r, nil
	}
	t, err := hsm.Open(cfg)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// OpenIn opens the token cfg names or, with insecure set, the soft keys in
// dataDir (datadir.Paths.SoftKeys): fleetd's choice for Init and Start.
func OpenIn(cfg hsm.Config, insecure bool, dataDir string, log *slog.Logger) (Keys, error) {
	var soft string
	if insecure {
		soft = datadir.Paths{Dir: dataDir}.SoftKeys()
	}
	return Open(cfg, soft, log)
}
