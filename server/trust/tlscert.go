package trust

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/internal/fsutil"
)

// serverCertValidity is the lifetime of fleetd's TLS certificate; it is
// renewed in the last third of it.
const serverCertValidity = 2 * 365 * 24 * time.Hour

func (s *Service) loadTLS() error {
	crt, err := tls.LoadX509KeyPair(s.opts.Files.ServerCert, s.opts.Files.ServerKey)
	if err != nil {
		return fmt.Errorf("trust: fleetd's TLS credential: %w", err)
	}
	key, ok := crt.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("trust: fleetd's TLS key is not a signer")
	}
	s.tls.Store(&crt)
	s.tlsKey = key
	return nil
}

// GetCertificate serves fleetd's TLS certificate (tls.Config's callback):
// read per handshake, so a re-issued one is used at once.
func (s *Service) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.tls.Load(), nil
}

// GetClientCertificate is GetCertificate for fleetd's own MQTT client.
func (s *Service) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return s.tls.Load(), nil
}

// reissueTLS gives fleetd a certificate under the current root, followed
// by the cross certificates back to the first root: devices that trust any
// root of the chain accept it. The file is replaced atomically, the live
// certificate at once.
func (s *Service) reissueTLS(ctx context.Context) error {
	old := s.tls.Load()
	leaf := old.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(old.Certificate[0]); err != nil {
			return fmt.Errorf("trust: fleetd's TLS certificate: %w", err)
		}
	}
	c, err := s.ca.Load().Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleServer, Name: "fleetd"},
		PublicKey: s.tlsKey.Public(), DNSNames: leaf.DNSNames, IPs: leaf.IPAddresses,
		NotAfter: s.opts.Now().Add(serverCertValidity)})
	if err != nil {
		return err
	}
	nc := tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: s.tlsKey, Leaf: c}
	pemChain := identity.EncodePEM(c)
	for _, x := range s.chain.Crosses() {
		nc.Certificate = append(nc.Certificate, x.Raw)
		pemChain = append(pemChain, identity.EncodePEM(x)...)
	}
	if err := fsutil.WriteAtomic(s.opts.Files.ServerCert, pemChain, 0o644); err != nil {
		return fmt.Errorf("trust: fleetd's TLS certificate: %w", err)
	}
	s.tls.Store(&nc)
	return nil
}

// checkTLS re-issues fleetd's certificate if it is not under the current
// root (an anchor rotation that stopped between writing the new set and
// replacing the certificate finishes here) or is in the last third of its
// life. fleetd calls it at start and then every minute.
func (s *Service) checkTLS(ctx context.Context) error {
	leaf, err := x509.ParseCertificate(s.tls.Load().Certificate[0])
	if err != nil {
		return fmt.Errorf("trust: fleetd's TLS certificate: %w", err)
	}
	switch {
	case leaf.CheckSignatureFrom(s.chain.Root()) != nil:
		s.log.Warn("fleetd's TLS certificate is not under the current root; issuing a new one")
	case s.opts.Now().After(leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3)):
		s.log.Info("fleetd's TLS certificate is in the last third of its life; issuing a new one", "not_after", leaf.NotAfter)
	default:
		return nil
	}
	return s.reissueTLS(ctx)
}
