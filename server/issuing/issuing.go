// Package issuing chooses who signs device certificates for fleetd: the
// embedded CA of the anchor chain (the default) or a step-ca the operator
// runs (`--issuer stepca`, package certs/stepca), and adapts the parts that
// depend on that choice: the roots the broker accepts, and revocation,
// which is also recorded at step-ca.
//
// # Basics
//
// Open returns an Issuing for the engine (certs.Issuer), Trust wraps the
// broker's trust with step-ca's roots and intermediates, and Revoker wraps
// the admin API's revoker so that a revoked device's certificates are
// revoked at step-ca too. Init creates the provisioner key in the token
// and returns the public JWK to register at step-ca.
//
// # Caveats
//
// Devices verify a new certificate against their anchor set: with step-ca
// as issuer, the set must carry step-ca's roots and intermediates
// (AnchorIssuers; Open hands them to the anchor chain, which publishes
// such a set at start when the current one lacks them, see
// trust.Service.UseIssuers).
package issuing

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/stepca"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/store"
)

// Issuer kinds (`--issuer`).
const (
	KindEmbedded = "embedded"
	KindStepCA   = "stepca"
)

// LabelProvisioner is the default label of the step-ca provisioner key in
// the token.
const LabelProvisioner = "keyfleet-stepca-provisioner"

// Config selects the issuer. Zero is the embedded CA.
type Config struct {
	// Kind is KindEmbedded ("" too) or KindStepCA.
	Kind string
	// StepCAURL is step-ca's base URL (`--stepca-url`).
	StepCAURL string
	// StepCARoot is step-ca's root certificate, PEM (`--stepca-root`).
	StepCARoot string
	// StepCAProvisioner is the JWK provisioner's name (`--stepca-provisioner`).
	StepCAProvisioner string
	// StepCAKey is the provisioner key's label in the token
	// (`--stepca-key`); empty means LabelProvisioner.
	StepCAKey string
}

// Keys gives the provisioner key from the token.
type Keys interface {
	GenerateP256(label string) (crypto.Signer, error)
	Signer(label string) (crypto.Signer, error)
}

// Validate checks that the configuration names a known issuer. Init needs
// no more; Open also needs step-ca's URL, root and provisioner.
func (c Config) Validate() error {
	switch c.Kind {
	case "", KindEmbedded, KindStepCA:
		return nil
	}
	return fmt.Errorf("issuing: unknown issuer %q (embedded or stepca)", c.Kind)
}

func (c Config) keyLabel() string {
	if c.StepCAKey != "" {
		return c.StepCAKey
	}
	return LabelProvisioner
}

// ProvisionerJWK creates the step-ca provisioner key in the token (kept if
// it exists) and returns its public JWK, for `step ca provisioner add NAME
// --type JWK --public-key FILE`. With the embedded CA it returns nil.
func ProvisionerJWK(c Config, keys Keys) ([]byte, error) {
	if err := c.Validate(); err != nil || c.Kind != KindStepCA {
		return nil, err
	}
	k, err := keys.Signer(c.keyLabel())
	if err != nil {
		if k, err = keys.GenerateP256(c.keyLabel()); err != nil {
			return nil, fmt.Errorf("issuing: provisioner key %q: %w", c.keyLabel(), err)
		}
	}
	return stepca.PublicJWKJSON(k.Public())
}

// JWKFile is where Init leaves the provisioner's public JWK, in fleetd's
// data directory.
const JWKFile = "stepca-provisioner.jwk"

// Init is `fleetd init`'s part: with step-ca as issuer, it creates the
// provisioner key (ProvisionerJWK), writes its public JWK to
// dataDir/JWKFile and prints it with the command that registers it.
func Init(c Config, keys Keys, dataDir string, log *slog.Logger) error {
	jwk, err := ProvisionerJWK(c, keys)
	if err != nil || jwk == nil {
		return err
	}
	name := filepath.Join(dataDir, JWKFile)
	if err := os.WriteFile(name, append(jwk, '\n'), 0o644); err != nil {
		return fmt.Errorf("issuing: %w", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, jwk); err != nil {
		return fmt.Errorf("issuing: %w", err)
	}
	log.Info("step-ca provisioner key made; register it at step-ca", "key_label", c.keyLabel(), "jwk", compact.String(),
		"jwk_file", name, "command", fmt.Sprintf("step ca provisioner add %s --type JWK --public-key %s", c.StepCAProvisioner, name))
	return nil
}

// Issuing is fleetd's issuer and what depends on it.
type Issuing struct {
	certs.Issuer
	step *stepca.Issuer // nil with the embedded CA
	log  *slog.Logger
}

// AnchorUser is the anchor chain's side of the issuer choice
// (trust.Service.UseIssuers): the CA certificates its sets must carry so
// that devices accept what the issuer signs, nil for the embedded CA.
type AnchorUser interface {
	UseIssuers(ctx context.Context, ders [][]byte) error
}

// Open returns the issuer c names; embedded is the anchor chain's CA.
// When embedded is also an AnchorUser (fleetd's trust service), Open hands
// it the issuer's CA certificates (AnchorIssuers), so that the anchor sets
// carry step-ca's roots and intermediates, or drop them after a switch
// back to the embedded CA.
func Open(ctx context.Context, c Config, embedded certs.Issuer, keys Keys, log *slog.Logger) (*Issuing, error) {
	i, err := open(ctx, c, embedded, keys, log)
	if err != nil {
		return nil, err
	}
	if u, ok := embedded.(AnchorUser); ok {
		if err := u.UseIssuers(ctx, i.AnchorIssuers()); err != nil {
			return nil, fmt.Errorf("issuing: %w", err)
		}
	}
	return i, nil
}

func open(ctx context.Context, c Config, embedded certs.Issuer, keys Keys, log *slog.Logger) (*Issuing, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Kind != KindStepCA {
		return &Issuing{Issuer: embedded, log: log}, nil
	}
	if c.StepCAURL == "" || c.StepCARoot == "" || c.StepCAProvisioner == "" {
		return nil, errors.New("issuing: --issuer stepca needs --stepca-url, --stepca-root and --stepca-provisioner")
	}
	key, err := keys.Signer(c.keyLabel())
	if err != nil {
		return nil, fmt.Errorf("issuing: provisioner key %q (fleetd init --issuer stepca makes it): %w", c.keyLabel(), err)
	}
	step, err := stepca.New(ctx, stepca.Options{URL: c.StepCAURL, RootFile: c.StepCARoot, Provisioner: c.StepCAProvisioner, Key: key})
	if err != nil {
		return nil, err
	}
	log.Info("issuing device certificates through step-ca", "url", c.StepCAURL, "provisioner", c.StepCAProvisioner)
	return &Issuing{Issuer: step, step: step, log: log}, nil
}

// AnchorIssuers returns step-ca's roots and intermediates (DER) for the
// anchor sets, or nil with the embedded CA, whose root the sets name.
func (i *Issuing) AnchorIssuers() [][]byte {
	if i.step == nil {
		return nil
	}
	var out [][]byte
	for _, c := range append(i.step.Roots(), i.step.Intermediates()...) {
		out = append(out, c.Raw)
	}
	return out
}

// Trust returns the broker's trust: t, plus step-ca's roots and
// intermediates when step-ca issues.
func (i *Issuing) Trust(t broker.Trust) broker.Trust {
	if i.step == nil {
		return t
	}
	return withStepCA{t, i.step}
}

type withStepCA struct {
	broker.Trust
	step *stepca.Issuer
}

// Roots adds step-ca's roots and intermediates (devices present their leaf
// alone) to the anchor chain's.
func (w withStepCA) Roots() *x509.CertPool {
	p := w.Trust.Roots().Clone()
	for _, c := range append(w.step.Roots(), w.step.Intermediates()...) {
		p.AddCert(c)
	}
	return p
}

// Revoker is what the admin API revokes devices with.
type Revoker interface {
	Revoke(ctx context.Context, device, actor, reason string) (time.Duration, error)
}

// Devices reads a device's certificates.
type Devices interface {
	GetDevice(ctx context.Context, id string) (*store.Device, error)
}

// Revoker returns r, which also revokes at step-ca, after r succeeded,
// every identity certificate of the device that is not past its end: then
// every party that trusts step-ca (its CRL, other brokers) refuses the
// device too. A failure at step-ca is logged, not returned: fleetd's own
// revocation (the broker refuses the device) has taken effect already.
func (i *Issuing) Revoker(r Revoker, devices Devices) Revoker {
	if i.step == nil {
		return r
	}
	return stepRevoker{r, i, devices}
}

type stepRevoker struct {
	Revoker
	i       *Issuing
	devices Devices
}

func (s stepRevoker) Revoke(ctx context.Context, device, actor, reason string) (time.Duration, error) {
	took, err := s.Revoker.Revoke(ctx, device, actor, reason)
	if err != nil {
		return took, err
	}
	d, err := s.devices.GetDevice(ctx, device)
	if err != nil {
		s.i.log.Error("revocation at step-ca: device not read", "device", device, "err", err)
		return took, nil
	}
	slot := d.Slot(protocol.SlotIdentity)
	if slot == nil {
		return took, nil
	}
	for _, v := range slot.Versions {
		if len(v.Cert) == 0 || time.Now().After(v.NotAfter) {
			continue
		}
		c, err := x509.ParseCertificate(v.Cert)
		if err == nil {
			err = s.i.step.Revoke(ctx, c, reasonKeyCompromise, "keyfleet: "+reason)
		}
		if err != nil {
			s.i.log.Error("revocation at step-ca failed", "device", device, "version", v.Version, "err", err)
			continue
		}
		s.i.log.Info("revoked at step-ca", "device", device, "version", v.Version, "serial", c.SerialNumber.String())
	}
	return took, nil
}

// reasonKeyCompromise is RFC 5280's CRLReason keyCompromise: fleetd revokes
// devices that must not connect again.
const reasonKeyCompromise = 1
