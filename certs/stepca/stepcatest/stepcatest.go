// Package stepcatest runs a real step-ca inside a test or benchmark
// process: smallstep's own `ca` server over its `authority` and `api`
// packages, on 127.0.0.1, with a bbolt database and one JWK provisioner
// whose public key the caller gives (fleetd's HSM key). Nothing is faked:
// tokens, CSRs, revocations and rekeys go through step-ca's code as in
// production.
package stepcatest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/db"

	"github.com/keyfleet/keyfleet/certs/stepca"
)

// TB is the part of testing.TB the harness uses (tests and benchmarks).
type TB interface {
	Helper()
	TempDir() string
	Cleanup(func())
	Fatalf(format string, args ...any)
}

// CA is a running step-ca.
type CA struct {
	// URL is its base URL (https://127.0.0.1:PORT).
	URL string
	// RootFile holds Root, PEM.
	RootFile string
	// Root and Intermediate are its CA certificates; leaves are issued
	// by Intermediate.
	Root, Intermediate *x509.Certificate
	// DB is step-ca's own database: ask it what step-ca recorded
	// (IsRevoked).
	DB db.AuthDB
	// Provisioner is the JWK provisioner's name.
	Provisioner string

	srv *ca.CA
}

// Start runs step-ca with a JWK provisioner named name for provisionerKey,
// issuing certificates valid for validity (0: 24 hours). It stops at the
// end of the test.
func Start(t TB, name string, provisionerKey crypto.PublicKey, validity time.Duration) *CA {
	t.Helper()
	if validity == 0 {
		validity = 24 * time.Hour
	}
	dir := t.TempDir()
	root, rootKey := newCA(t, "step-ca test root", nil, nil)
	inter, interKey := newCA(t, "step-ca test intermediate", root, rootKey)
	c := &CA{Root: root, Intermediate: inter, Provisioner: name, RootFile: filepath.Join(dir, "root.pem")}
	writePEM(t, c.RootFile, "CERTIFICATE", root.Raw)
	interFile, keyFile := filepath.Join(dir, "intermediate.pem"), filepath.Join(dir, "intermediate.key")
	writePEM(t, interFile, "CERTIFICATE", inter.Raw)
	der, err := x509.MarshalECPrivateKey(interKey)
	if err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
	writePEM(t, keyFile, "EC PRIVATE KEY", der)

	jwk, err := stepca.PublicJWK(provisionerKey)
	if err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
	d := provisioner.Duration{Duration: validity}
	prov := &provisioner.JWK{Type: "JWK", Name: name, Key: jwk,
		Claims: &provisioner.Claims{DefaultTLSDur: &d, MaxTLSDur: &d}}
	if c.DB, err = db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(dir, "db")}); err != nil {
		t.Fatalf("stepcatest: database: %v", err)
	}
	addr := freeAddr(t)
	cfg := &config.Config{
		Root: []string{c.RootFile}, IntermediateCert: interFile, IntermediateKey: keyFile,
		Address: addr, DNSNames: []string{"127.0.0.1"},
		AuthorityConfig: &config.AuthConfig{Provisioners: provisioner.List{prov}},
	}
	if c.srv, err = ca.New(cfg, ca.WithDatabase(c.DB), ca.WithQuiet(true)); err != nil {
		t.Fatalf("stepcatest: start: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.srv.Run() }()
	t.Cleanup(func() {
		_ = c.srv.Stop() // also shuts the database down
		<-done
	})
	c.URL = "https://" + addr
	client, err := ca.NewClient(c.URL, ca.WithRootFile(c.RootFile))
	if err != nil {
		t.Fatalf("stepcatest: client: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := client.Health(); err == nil {
			return c
		} else if time.Now().After(deadline) {
			t.Fatalf("stepcatest: step-ca on %s not healthy: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Rekey does what `step ca rekey` does for a device: a new key, a CSR for
// it, and step-ca's /rekey over mTLS with the current certificate (leaf
// and intermediate). It returns the new key and certificate chain.
func (c *CA) Rekey(ctx context.Context, client *ca.Client, cur tls.Certificate) (*ecdsa.PrivateKey, []*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(cur.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: leaf.Subject, URIs: leaf.URIs}, key)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Root)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cur}, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	resp, err := client.RekeyWithContext(ctx, &api.RekeyRequest{CsrPEM: api.NewCertificateRequest(csr)}, tr)
	if err != nil {
		return nil, nil, fmt.Errorf("stepcatest: rekey %s: %w", leaf.Subject.CommonName, err)
	}
	var chain []*x509.Certificate
	for _, c := range resp.CertChainPEM {
		chain = append(chain, c.Certificate)
	}
	if len(chain) == 0 {
		return nil, nil, errors.New("stepcatest: rekey: empty answer")
	}
	return key, chain, nil
}

func newCA(t TB, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	signer := key
	if parent == nil {
		parent = tmpl
	} else {
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
	return cert, key
}

func writePEM(t TB, name, typ string, der []byte) {
	if err := os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
}

func freeAddr(t TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("stepcatest: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}
