package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/internal/fsutil"
	"github.com/keyfleet/keyfleet/server/trust"
)

// ErrInitialized: Init found an existing deployment in the data directory.
var ErrInitialized = errors.New("server: already initialised")

// Init creates a deployment: the CA key and the update-signing key in the
// token (sensitive, non-extractable), the CA certificate, fleetd's TLS
// credential and an operator credential in DataDir/admin. It refuses to run
// twice on the same data directory.
func Init(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	p := Paths{cfg.DataDir}
	if _, err := os.Stat(p.CACert()); err == nil {
		return fmt.Errorf("%w: %s exists", ErrInitialized, p.CACert())
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("server: init: %w", err)
	}
	keys, err := openCustody(&cfg)
	if err != nil {
		return err
	}
	defer keys.Close()
	caKey, err := keys.GenerateP256(LabelCA)
	if err != nil {
		return err
	}
	updKey, err := keys.GenerateP256(LabelUpdate)
	if err != nil {
		return err
	}
	now := cfg.Now()
	root, err := certs.NewRoot(caKey, "keyfleet CA", now, 10*365*24*time.Hour)
	if err != nil {
		return err
	}
	ca, err := certs.NewCA(root, caKey, certs.CAOptions{Validity: 2 * 365 * 24 * time.Hour, Now: cfg.Now})
	if err != nil {
		return err
	}
	updPEM, err := publicKeyPEM(updKey.Public())
	if err != nil {
		return err
	}
	// fleetd's own TLS credential: broker endpoint, MQTT client, admin API.
	srvKey, srvKeyPEM, err := newSoftKey()
	if err != nil {
		return err
	}
	dns, ips := []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, n := range cfg.ServerNames {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else if n != "" {
			dns = append(dns, n)
		}
	}
	srvCert, err := ca.Issue(ctx, certs.Request{
		Identity: identity.Identity{Role: identity.RoleServer, Name: "fleetd"}, PublicKey: srvKey.Public(),
		DNSNames: dns, IPs: ips,
	})
	if err != nil {
		return err
	}
	if err := writeAdmin(ctx, ca, p.AdminDir(), "admin", root); err != nil {
		return err
	}
	if _, err := ensureBirthCA(keys, p, cfg.Now); err != nil {
		return err
	}
	if _, err := trust.Genesis(p.Anchors(), keys, root, firstLabels, cfg.Now); err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{p.ServerKey(), srvKeyPEM, 0o600},
		{p.ServerCert(), identity.EncodePEM(srvCert), 0o644},
		{p.UpdateKey(), updPEM, 0o644},
		{p.CACert(), identity.EncodePEM(root), 0o644}, // last: its presence marks a finished init
	} {
		if err := fsutil.WriteAtomic(f.path, f.data, f.perm); err != nil {
			return fmt.Errorf("server: init: %w", err)
		}
	}
	cfg.Logger.Info("initialised", "data", cfg.DataDir, "ca_key", keys.URI(LabelCA), "update_key", keys.URI(LabelUpdate),
		"admin", p.AdminDir())
	return nil
}

// writeAdmin issues an operator credential into dir: admin.key, admin.pem
// and ca.pem, which is what fleetctl reads.
func writeAdmin(ctx context.Context, ca *certs.CA, dir, name string, root *x509.Certificate) error {
	k, kPEM, err := newSoftKey()
	if err != nil {
		return err
	}
	c, err := ca.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleAdmin, Name: name}, PublicKey: k.Public()})
	if err != nil {
		return err
	}
	for name, f := range map[string][]byte{"admin.key": kPEM, "admin.pem": identity.EncodePEM(c), "ca.pem": identity.EncodePEM(root)} {
		perm := os.FileMode(0o644)
		if name == "admin.key" {
			perm = 0o600
		}
		if err := fsutil.WriteAtomic(filepath.Join(dir, name), f, perm); err != nil {
			return fmt.Errorf("server: admin credential: %w", err)
		}
	}
	return nil
}

// firstLabels are the HSM labels of anchor set version 1.
var firstLabels = trust.Labels{CA: LabelCA, Update: LabelUpdate, Firmware: LabelFirmware}

// birthValidity is the lifetime of the manufacturer root; birth
// credentials live as long as devices do.
const birthValidity = 30 * 365 * 24 * time.Hour

// ensureBirthCA loads the manufacturer CA that issues birth credentials,
// making it (key in the token, root certificate in pki/) if the deployment
// predates it.
func ensureBirthCA(keys custody, p Paths, now func() time.Time) (*certs.CA, error) {
	var root *x509.Certificate
	if cs, err := identity.LoadPEM(p.BirthCA()); err == nil {
		root = cs[0]
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("server: birth CA: %w", err)
	}
	key, err := keys.Signer(LabelBirthCA)
	if err != nil {
		if key, err = keys.GenerateP256(LabelBirthCA); err != nil {
			return nil, err
		}
	}
	if root == nil {
		if root, err = certs.NewRoot(key, "keyfleet IDevID CA", now(), birthValidity); err != nil {
			return nil, err
		}
		if err := fsutil.WriteAtomic(p.BirthCA(), identity.EncodePEM(root), 0o644); err != nil {
			return nil, fmt.Errorf("server: birth CA: %w", err)
		}
	}
	return certs.NewCA(root, key, certs.CAOptions{Validity: birthValidity, Now: now})
}
