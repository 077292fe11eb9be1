package server

import (
	"io"
	"log/slog"

	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/trust"
)

// custody is what fleetd needs of a key store: a token or soft keys.
type custody interface {
	trust.Keys // the signing keys (CA, update, firmware, birth CA)
	escrow.HSM // the escrow's key-encryption key and data keys
	URI(label string) string
	Ops() uint64
	io.Closer
}

var (
	_ custody = (*hsm.Token)(nil)
	_ custody = (*hsm.SoftKeys)(nil)
)

func openCustody(c *Config) (custody, error) {
	if c.InsecureSoftKeys {
		c.Logger.Warn("INSECURE: CA and update-signing keys are software keys in files; anyone who reads "+
			Paths{c.DataDir}.SoftKeys()+" can impersonate the fleet. Use a PKCS#11 token in production.",
			slog.Bool("insecure_soft_keys", true))
		k, err := hsm.OpenSoftKeys(Paths{c.DataDir}.SoftKeys())
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return k, nil
	}
	t, err := hsm.Open(c.HSM)
	if err != nil {
		return nil, err
	}
	return t, nil
}
