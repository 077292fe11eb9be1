package trust

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/internal/fsutil"
)

// FirstRootValidity is the lifetime of the root made at init.
const FirstRootValidity = 10 * 365 * 24 * time.Hour

// Bootstrap makes a new deployment's trust material from opts (Files,
// Keys, FirstLabels, BirthLabel, Now): the CA, update-signing and birth CA
// keys in custody, the first root, anchor set version 1, the birth CA,
// fleetd's TLS credential (for localhost and names) and the first operator
// credential in Files.AdminDir. The first root is written last, to
// Files.CACert: its presence marks a finished init.
func Bootstrap(ctx context.Context, opts Options, names []string) error {
	opts.setDefaults()
	files, keys, labels, now := opts.Files, opts.Keys, opts.FirstLabels, opts.Now
	if _, err := OpenBirthCA(keys, opts.BirthLabel, files.BirthCA, now); err != nil {
		return err
	}
	caKey, err := keys.GenerateP256(labels.CA)
	if err != nil {
		return err
	}
	updKey, err := keys.GenerateP256(labels.Update)
	if err != nil {
		return err
	}
	root, err := certs.NewRoot(caKey, "keyfleet CA", now(), FirstRootValidity)
	if err != nil {
		return err
	}
	ca, err := certs.NewCA(root, caKey, certs.CAOptions{Validity: serverCertValidity, Now: now})
	if err != nil {
		return err
	}
	updPEM, err := PublicKeyPEM(updKey.Public())
	if err != nil {
		return err
	}
	srvKey, srvKeyPEM, err := newSoftKey()
	if err != nil {
		return err
	}
	dns, ips := []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, n := range names {
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
	if err := writeOperator(ctx, ca, files.AdminDir, "admin", root); err != nil {
		return err
	}
	if _, err := Genesis(files.Anchors, keys, root, labels, now); err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{files.ServerKey, srvKeyPEM, 0o600},
		{files.ServerCert, identity.EncodePEM(srvCert), 0o644},
		{files.UpdateKey, updPEM, 0o644},
		{files.CACert, identity.EncodePEM(root), 0o644}, // last: its presence marks a finished init
	} {
		if err := fsutil.WriteAtomic(f.path, f.data, f.perm); err != nil {
			return fmt.Errorf("trust: init: %w", err)
		}
	}
	return nil
}

// writeOperator issues an operator credential into dir: admin.key,
// admin.pem and ca.pem, which is what fleetctl reads.
func writeOperator(ctx context.Context, ca *certs.CA, dir, name string, root *x509.Certificate) error {
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
			return fmt.Errorf("trust: operator credential: %w", err)
		}
	}
	return nil
}

// newSoftKey makes a P-256 key kept in a file (fleetd's TLS key, an
// operator's key): a TLS handshake must not cost an HSM operation.
func newSoftKey() (*ecdsa.PrivateKey, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// PublicKeyPEM encodes a public key as a PEM PUBLIC KEY block, the form
// devices are given the update key in.
func PublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
