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
)

// Open opens the token cfg names or, with insecureSoftDir set, the soft
// keys in that directory instead.
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
