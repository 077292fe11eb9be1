// Package stepca issues fleet certificates through a step-ca the operator
// already runs, instead of keyfleet's embedded CA.
//
// # Basics
//
// Issuer implements certs.Issuer with smallstep's own client
// (github.com/smallstep/certificates/ca): fleetd checks the enroll as
// always (old key, CSR, identity), then forwards the device's CSR to
// step-ca's /sign with a one-time token of a JWK provisioner. fleetd signs
// that token with a key in its HSM (any crypto.Signer), so it holds no
// software key: the provisioner's public key is registered at step-ca once
// (PublicJWK prints it). The token names the device's identity URI as its
// only SAN, which step-ca's default template puts in the leaf: the device's
// CSR carries its id as common name only, as with the embedded CA.
//
// Revoke records a revocation at step-ca (passive: step-ca marks the serial
// revoked in its database and CRL), with a token of the same provisioner.
// fleetd's broker refuses a revoked device from its own store at once; the
// record at step-ca is for every other party that trusts step-ca.
//
// # Caveats
//
// step-ca issues from an intermediate: a verifier needs Intermediates
// beside Roots. The JWK provisioner allows any subject to whoever holds its
// key; register it for fleetd alone.
package stepca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"
	"go.step.sm/crypto/jose"

	"github.com/keyfleet/keyfleet/certs"
)

// Options configures an Issuer. Every field without a default is required.
type Options struct {
	// URL is step-ca's base URL, e.g. https://ca.example:9000.
	URL string
	// RootFile is step-ca's root certificate (PEM): the client trusts
	// step-ca's TLS endpoint through it and devices get it as an anchor.
	RootFile string
	// Provisioner is the JWK provisioner's name at step-ca.
	Provisioner string
	// Key signs the provisioner tokens; usually an HSM key. Its public key
	// is the one registered at step-ca.
	Key crypto.Signer
	// TokenLifetime bounds each one-time token; 0 means 5 minutes.
	TokenLifetime time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Issuer has step-ca sign device certificates. It is safe for concurrent
// use.
type Issuer struct {
	opts   Options
	client *ca.Client
	kid    string
	signer jose.Signer
	base   string

	mu            sync.RWMutex
	roots         []*x509.Certificate
	intermediates []*x509.Certificate
}

var _ certs.Issuer = (*Issuer)(nil)

// ErrNoCSR: step-ca signs only a request the device signed itself.
var ErrNoCSR = errors.New("stepca: the request carries no CSR")

// New connects to step-ca, fetches its roots and prepares the token signer.
func New(ctx context.Context, opts Options) (*Issuer, error) {
	if opts.URL == "" || opts.RootFile == "" || opts.Provisioner == "" || opts.Key == nil {
		return nil, errors.New("stepca: URL, root file, provisioner and key are required")
	}
	if opts.TokenLifetime == 0 {
		opts.TokenLifetime = 5 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	client, err := ca.NewClient(opts.URL, ca.WithRootFile(opts.RootFile))
	if err != nil {
		return nil, fmt.Errorf("stepca: client for %s: %w", opts.URL, err)
	}
	jwk, err := PublicJWK(opts.Key.Public())
	if err != nil {
		return nil, err
	}
	so := new(jose.SignerOptions).WithType("JWT").WithHeader("kid", jwk.KeyID)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.NewOpaqueSigner(opts.Key)}, so)
	if err != nil {
		return nil, fmt.Errorf("stepca: token signer: %w", err)
	}
	is := &Issuer{opts: opts, client: client, kid: jwk.KeyID, signer: signer, base: strings.TrimSuffix(opts.URL, "/")}
	if err := is.Refresh(ctx); err != nil {
		return nil, err
	}
	return is, nil
}

// PublicJWK is the provisioner key as step-ca registers it (`step ca
// provisioner add NAME --type JWK --public-key FILE`): ES256, key id the
// RFC 7638 thumbprint, as step's own tools make it.
func PublicJWK(pub crypto.PublicKey) (*jose.JSONWebKey, error) {
	jwk := &jose.JSONWebKey{Key: pub, Algorithm: string(jose.ES256), Use: "sig"}
	kid, err := jose.Thumbprint(jwk)
	if err != nil {
		return nil, fmt.Errorf("stepca: provisioner key: %w", err)
	}
	jwk.KeyID = kid
	return jwk, nil
}

// PublicJWKJSON is PublicJWK encoded for the file step reads.
func PublicJWKJSON(pub crypto.PublicKey) ([]byte, error) {
	jwk, err := PublicJWK(pub)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(jwk, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("stepca: provisioner key: %w", err)
	}
	return b, nil
}

// Refresh reads step-ca's roots again (after a root rotation at step-ca).
func (is *Issuer) Refresh(ctx context.Context) error {
	resp, err := is.client.RootsWithContext(ctx)
	if err != nil {
		return fmt.Errorf("stepca: roots from %s: %w", is.opts.URL, err)
	}
	var roots []*x509.Certificate
	for _, c := range resp.Certificates {
		roots = append(roots, c.Certificate)
	}
	if len(roots) == 0 {
		return fmt.Errorf("stepca: %s has no roots", is.opts.URL)
	}
	inter, err := is.fetchIntermediates(ctx, roots)
	if err != nil {
		return err
	}
	is.mu.Lock()
	is.roots, is.intermediates = roots, inter
	is.mu.Unlock()
	return nil
}

// fetchIntermediates reads step-ca's /intermediates.pem (smallstep's
// client has no call for it) over TLS verified against roots.
func (is *Issuer) fetchIntermediates(ctx context.Context, roots []*x509.Certificate) ([]*x509.Certificate, error) {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, is.base+"/intermediates.pem", nil)
	if err != nil {
		return nil, fmt.Errorf("stepca: intermediates: %w", err)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("stepca: intermediates from %s: %w", is.opts.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("stepca: intermediates from %s: status %d, %v", is.opts.URL, resp.StatusCode, err)
	}
	var out []*x509.Certificate
	for rest := body; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("stepca: intermediates from %s: %w", is.opts.URL, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("stepca: %s has no intermediates", is.opts.URL)
	}
	return out, nil
}

// Roots are step-ca's roots: what devices and the broker must trust.
func (is *Issuer) Roots() []*x509.Certificate {
	is.mu.RLock()
	defer is.mu.RUnlock()
	return append([]*x509.Certificate(nil), is.roots...)
}

// Intermediates are step-ca's issuing certificates: those it listed at New
// (or Refresh) and any other it has returned with a certificate since.
func (is *Issuer) Intermediates() []*x509.Certificate {
	is.mu.RLock()
	defer is.mu.RUnlock()
	return append([]*x509.Certificate(nil), is.intermediates...)
}

// learn adds the intermediates of an answer not known yet (step-ca's
// intermediate was replaced since Refresh).
func (is *Issuer) learn(chain []api.Certificate) {
	is.mu.Lock()
	defer is.mu.Unlock()
next:
	for _, c := range chain {
		if c.Certificate == nil {
			continue
		}
		for _, k := range is.intermediates {
			if k.Equal(c.Certificate) {
				continue next
			}
		}
		is.intermediates = append(is.intermediates, c.Certificate)
	}
}

// claims are a JWK provisioner token's: the registered ones and the SANs
// step-ca puts in the certificate.
type claims struct {
	jose.Claims
	SANs []string `json:"sans,omitempty"`
}

// token signs a one-time token for path (sign, revoke) naming subject.
func (is *Issuer) token(path, subject string, sans []string) (string, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("stepca: token id: %w", err)
	}
	now := is.opts.Now()
	c := claims{Claims: jose.Claims{
		Issuer:    is.opts.Provisioner,
		Subject:   subject,
		Audience:  jose.Audience{is.base + "/1.0/" + path},
		ID:        hex.EncodeToString(id[:]),
		IssuedAt:  jose.NewNumericDate(now),
		NotBefore: jose.NewNumericDate(now.Add(-time.Minute)),
		Expiry:    jose.NewNumericDate(now.Add(is.opts.TokenLifetime)),
	}, SANs: sans}
	tok, err := jose.Signed(is.signer).Claims(c).CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("stepca: sign %s token: %w", path, err)
	}
	return tok, nil
}

// Issue has step-ca sign req.CSR (which the caller has checked) for
// req.Identity, with the identity URI as the certificate's only SAN.
func (is *Issuer) Issue(ctx context.Context, req certs.Request) (*x509.Certificate, error) {
	if len(req.CSR) == 0 {
		return nil, ErrNoCSR
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("stepca: issue %s: %w", req.Identity, err)
	}
	if pub, ok := csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(req.PublicKey) {
		return nil, fmt.Errorf("stepca: issue %s: the CSR is for another key", req.Identity)
	}
	ott, err := is.token("sign", req.Identity.Name, []string{req.Identity.URI().String()})
	if err != nil {
		return nil, err
	}
	sr := &api.SignRequest{CsrPEM: api.NewCertificateRequest(csr), OTT: ott}
	if !req.NotAfter.IsZero() {
		sr.NotAfter = api.NewTimeDuration(req.NotAfter)
	}
	resp, err := is.client.SignWithContext(ctx, sr)
	if err != nil {
		return nil, fmt.Errorf("stepca: issue %s: %w", req.Identity, err)
	}
	if len(resp.CertChainPEM) == 0 || resp.CertChainPEM[0].Certificate == nil {
		return nil, fmt.Errorf("stepca: issue %s: empty answer", req.Identity)
	}
	is.learn(resp.CertChainPEM[1:])
	return resp.CertChainPEM[0].Certificate, nil
}

// Revoke records at step-ca that cert is revoked (RFC 5280 reason code and
// a free-text reason). step-ca answers a second revocation of the same
// serial with an error; Revoke treats that as done.
func (is *Issuer) Revoke(ctx context.Context, cert *x509.Certificate, reasonCode int, reason string) error {
	serial := cert.SerialNumber.String()
	ott, err := is.token("revoke", serial, nil)
	if err != nil {
		return err
	}
	_, err = is.client.RevokeWithContext(ctx, &api.RevokeRequest{Serial: serial, OTT: ott, ReasonCode: reasonCode,
		Reason: reason, Passive: true}, nil)
	if err != nil && !strings.Contains(err.Error(), "already revoked") {
		return fmt.Errorf("stepca: revoke serial %s: %w", serial, err)
	}
	return nil
}
