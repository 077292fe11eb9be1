package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/fsutil"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/admin"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// issuer is the CA of the current anchor set, swapped when the anchors
// rotate the root.
type issuer struct{ cur atomic.Pointer[certs.CA] }

// Issue implements certs.Issuer.
func (i *issuer) Issue(ctx context.Context, req certs.Request) (*x509.Certificate, error) {
	return i.cur.Load().Issue(ctx, req)
}

// loadCA makes the current anchor set's root and key the issuing CA.
func (s *Server) loadCA() error {
	key, err := s.chain.Signer(trust.RoleCA)
	if err != nil {
		return err
	}
	ca, err := certs.NewCA(s.chain.Root(), key, certs.CAOptions{Validity: s.cfg.CertValidity, Now: s.cfg.Now})
	if err != nil {
		return err
	}
	s.ca.cur.Store(ca)
	return nil
}

// Roots implements broker.Trust: every root of the anchor chain.
func (s *Server) Roots() *x509.CertPool { return s.chain.Roots() }

// BirthRoots implements broker.Trust.
func (s *Server) BirthRoots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.birth.Certificate())
	return p
}

func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.tlsCrt.Load(), nil
}

func (s *Server) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return s.tlsCrt.Load(), nil
}

// reissueTLS gives fleetd a certificate under the current root, followed
// by the cross certificates back to the first root: devices that trust any
// root of the chain accept it. The file is replaced atomically, the live
// certificate at once.
func (s *Server) reissueTLS(ctx context.Context) error {
	old := s.tlsCrt.Load()
	leaf := old.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(old.Certificate[0]); err != nil {
			return fmt.Errorf("server: TLS certificate: %w", err)
		}
	}
	ca := s.ca.cur.Load()
	c, err := ca.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleServer, Name: "fleetd"},
		PublicKey: s.tlsKey.Public(), DNSNames: leaf.DNSNames, IPs: leaf.IPAddresses,
		NotAfter: s.cfg.Now().Add(2 * 365 * 24 * time.Hour)})
	if err != nil {
		return err
	}
	nc := tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: s.tlsKey, Leaf: c}
	pemChain := identity.EncodePEM(c)
	for _, x := range s.chain.Crosses() {
		nc.Certificate = append(nc.Certificate, x.Raw)
		pemChain = append(pemChain, identity.EncodePEM(x)...)
	}
	if err := fsutil.WriteAtomic(Paths{s.cfg.DataDir}.ServerCert(), pemChain, 0o644); err != nil {
		return fmt.Errorf("server: TLS certificate: %w", err)
	}
	s.tlsCrt.Store(&nc)
	return nil
}

// checkTLS re-issues fleetd's certificate if it is not under the current
// root (an anchor rotation that stopped between writing the new set and
// replacing the certificate finishes here) or is in the last third of its
// life. fleetd calls it at start and then every minute.
func (s *Server) checkTLS(ctx context.Context) error {
	c := s.tlsCrt.Load()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return fmt.Errorf("server: TLS certificate: %w", err)
	}
	switch {
	case leaf.CheckSignatureFrom(s.chain.Root()) != nil:
		s.log.Warn("fleetd's TLS certificate is not under the current root; issuing a new one")
	case s.cfg.Now().After(leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3)):
		s.log.Info("fleetd's TLS certificate is in the last third of its life; issuing a new one", "not_after", leaf.NotAfter)
	default:
		return nil
	}
	return s.reissueTLS(ctx)
}

// bundle is what a factory station installs besides the device's own
// credentials.
func (s *Server) bundle() admin.ProvisionResponse {
	return admin.ProvisionResponse{CA: string(identity.EncodePEM(s.chain.Root())), UpdateKey: s.updatePEM(),
		Broker: s.advertised(), Anchors: s.chain.Current().Raw}
}

func (s *Server) updatePEM() string {
	k, err := s.chain.Current().UpdatePublicKey()
	if err != nil {
		return string(s.update)
	}
	b, err := publicKeyPEM(k)
	if err != nil {
		return string(s.update)
	}
	return string(b)
}

// issueBirth issues a birth credential (IDevID) for device: fleetd acting
// as the factory's manufacturer CA.
func (s *Server) issueBirth(ctx context.Context, device string, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	if err := protocol.ValidateDeviceID(device); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: birth CSR: %v", certs.ErrBadCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: birth key must be ECDSA P-256", certs.ErrBadCSR)
	}
	if csr.Subject.CommonName != device {
		return nil, fmt.Errorf("%w: birth CSR names %q", certs.ErrCSRIdentity, csr.Subject.CommonName)
	}
	return s.birth.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleIDevID, Name: device}, PublicKey: pub})
}

// publishAnchors puts the newest sets, retained, on the anchors topic, and
// with live also on the live anchors topic: devices connected when the
// anchors rotate walk at once.
func (s *Server) publishAnchors(ctx context.Context, conn *mqttc.Conn, live bool) error {
	m := protocol.Stamp(&protocol.Anchors{Sets: s.chain.Latest(protocol.MaxChainSets)}, s.cfg.Now(), 0)
	m.IAT = 0
	b, err := s.codec.Bare(m)
	if err != nil {
		return err
	}
	if err := conn.PublishRetained(ctx, s.cfg.Topics.Anchors(), b); err != nil {
		return err
	}
	if live {
		return conn.Publish(ctx, s.cfg.Topics.AnchorsLive(), b)
	}
	return nil
}

// publishFirmware broadcasts the current release on the firmware topic.
// It is not retained: every device reports its version in each hello and
// is offered the release then, so a retained copy would only add its bytes
// to every reconnect.
func (s *Server) publishFirmware(ctx context.Context, conn *mqttc.Conn) error {
	r := s.fw.Load()
	if r == nil {
		return nil
	}
	m := protocol.Stamp(&protocol.Firmware{Manifest: r.Manifest}, s.cfg.Now(), 0)
	m.IAT = 0
	b, err := s.codec.Bare(m)
	if err != nil {
		return err
	}
	return conn.Publish(ctx, s.cfg.Topics.FirmwareTopic(), b)
}

// Anchors implements admin.Backend.
func (s *Server) Anchors(ctx context.Context) (admin.AnchorsInfo, error) {
	return anchorsInfo(s.chain)
}

func anchorsInfo(c *trust.Chain) (admin.AnchorsInfo, error) {
	cur := c.Current()
	info := admin.AnchorsInfo{Version: cur.Version, IssuedAt: time.Unix(int64(cur.IssuedAt), 0).UTC()}
	root := c.Root()
	info.Root = root.Subject.CommonName
	for _, kv := range []struct {
		dst *string
		pub func() (*ecdsa.PublicKey, error)
	}{{&info.RootKeyID, cur.RootPublicKey}, {&info.UpdateKeyID, cur.UpdatePublicKey}, {&info.FirmwareKID, cur.FirmwarePublicKey}} {
		k, err := kv.pub()
		if err != nil {
			return info, err
		}
		id, err := protocol.KeyID(k)
		if err != nil {
			return info, err
		}
		*kv.dst = fmt.Sprintf("%x", id)
	}
	return info, nil
}

// RotateAnchors implements admin.Backend: the next anchor set, then
// everything that follows from it, in an order that never leaves a device
// stranded: new CA and fleetd certificate first (old devices reach it
// through the cross certificates), then the retained chain, then a new
// online key under a new update key.
func (s *Server) RotateAnchors(ctx context.Context, roles []string, actor string) (admin.AnchorsInfo, error) {
	s.rotMu.Lock()
	defer s.rotMu.Unlock()
	prev := s.chain.Current()
	set, err := s.chain.Rotate(ctx, roles)
	if err != nil {
		return admin.AnchorsInfo{}, err
	}
	// The set is on disk and served from now on: every follow-up is tried
	// even if one fails, and a restart finishes what did not (Start issues
	// from the current root, re-issues fleetd's certificate and certifies
	// the online key with the current update key).
	var errs []error
	newCA := !bytes.Equal(prev.Root, set.Root)
	if newCA {
		if err := s.loadCA(); err != nil {
			errs = append(errs, err)
		} else if err := s.reissueTLS(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		if err := s.publishAnchors(ctx, conn, true); err != nil {
			s.log.Warn("anchors not published; devices get them at their next hello", "err", err)
		}
	}
	if !bytes.Equal(prev.UpdateKey, set.UpdateKey) {
		if upd, err := s.chain.Signer(trust.RoleUpdate); err != nil {
			errs = append(errs, err)
		} else if k, err := s.keeper.SetUpdate(upd, s.cfg.Now()); err != nil {
			errs = append(errs, err)
		} else if conn != nil {
			if err := conn.Publish(ctx, s.cfg.Topics.Delegation(), k.Delegation); err != nil {
				s.log.Warn("delegation broadcast failed", "err", err)
			}
		}
	}
	if err := s.st.Audit(ctx, storeEvent("anchors-rotated", set.Version, actor, fmt.Sprintf("roles %v, from v%d", roles, prev.Version))); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		s.log.Error("anchor rotation incomplete; restart fleetd to finish it", "version", set.Version, "err", err)
		return admin.AnchorsInfo{}, fmt.Errorf("server: anchors v%d made, follow-up incomplete (restart fleetd to finish): %w", set.Version, err)
	}
	s.log.Info("trust anchors rotated", "version", set.Version, "roles", roles, "new_root", newCA)
	return anchorsInfo(s.chain)
}

// Revoke implements admin.Backend.
func (s *Server) Revoke(ctx context.Context, device, actor, reason string) (admin.RevokeResponse, error) {
	took, err := s.engine.Revoke(ctx, device, actor, reason)
	if err != nil {
		return admin.RevokeResponse{}, err
	}
	return admin.RevokeResponse{Device: device, TookMS: float64(took.Microseconds()) / 1000}, nil
}

// RotateDataKeys implements admin.Backend: a new primary data key for
// every device, pushed at once to those connected.
func (s *Server) RotateDataKeys(ctx context.Context, actor string) (admin.DataKeysResponse, error) {
	res, err := s.escrow.Rotate(ctx, actor, func(device string) {
		if err := s.engine.PushDataKeys(ctx, device); err != nil {
			s.log.Debug("data key not pushed; the device gets it at its next hello", "device", device, "err", err)
		}
	})
	if err != nil {
		return admin.DataKeysResponse{}, err
	}
	out := admin.DataKeysResponse{Devices: len(res.Rotated), Failed: len(res.Failed)}
	for id, err := range res.Failed {
		if len(out.Errors) < 20 {
			out.Errors = append(out.Errors, id+": "+err.Error())
		}
	}
	return out, nil
}

// RecoverEscrow implements admin.Backend.
func (s *Server) RecoverEscrow(ctx context.Context, device string, version uint32, op *x509.Certificate, actor string) (admin.EscrowResponse, error) {
	r, err := s.escrow.Recover(ctx, device, version, op, actor)
	if err != nil {
		return admin.EscrowResponse{}, err
	}
	return admin.EscrowResponse{Device: device, Version: version, Status: r.Status.String(), Sealed: r.Sealed, Audience: r.Audience}, nil
}

// firmwareRelease is the firmware devices should run.
type firmwareRelease struct {
	Version  uint32 `json:"version"`
	Manifest []byte `json:"manifest"`
}

func (s *Server) loadFirmware() error {
	b, err := os.ReadFile(Paths{s.cfg.DataDir}.Firmware())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("server: firmware release: %w", err)
	}
	var r firmwareRelease
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("server: firmware release: %w", err)
	}
	s.fw.Store(&r)
	return nil
}

// CurrentFirmware implements rotation.FirmwareSource.
func (s *Server) CurrentFirmware() (uint32, []byte) {
	r := s.fw.Load()
	if r == nil {
		return 0, nil
	}
	return r.Version, r.Manifest
}

// PublishFirmware implements admin.Backend: the manifest is signed with
// the current anchor set's firmware key, stored, and offered to every
// device that reports an older version.
func (s *Server) PublishFirmware(ctx context.Context, req admin.FirmwareRequest, actor string) (admin.FirmwareInfo, error) {
	vendor, err := firmware.ParseUUID(req.Vendor)
	if err != nil {
		return admin.FirmwareInfo{}, fmt.Errorf("%w: vendor: %v", admin.ErrInvalid, err)
	}
	class, err := firmware.ParseUUID(req.Class)
	if err != nil {
		return admin.FirmwareInfo{}, fmt.Errorf("%w: class: %v", admin.ErrInvalid, err)
	}
	if cur := s.fw.Load(); cur != nil && req.Version <= cur.Version {
		return admin.FirmwareInfo{}, fmt.Errorf("%w: version %d is not newer than the current %d", admin.ErrInvalid, req.Version, cur.Version)
	}
	m := &firmware.Manifest{VendorID: vendor, ClassID: class, Version: req.Version, Size: req.Size, URI: req.URI}
	copy(m.Digest[:], req.Digest)
	key, err := s.chain.Signer(trust.RoleFirmware)
	if err != nil {
		return admin.FirmwareInfo{}, err
	}
	signed, err := firmware.Sign(m, key)
	if err != nil {
		return admin.FirmwareInfo{}, fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	r := &firmwareRelease{Version: req.Version, Manifest: signed}
	b, err := json.Marshal(r)
	if err != nil {
		return admin.FirmwareInfo{}, err
	}
	if err := fsutil.WriteAtomic(Paths{s.cfg.DataDir}.Firmware(), b, 0o644); err != nil {
		return admin.FirmwareInfo{}, fmt.Errorf("server: firmware release: %w", err)
	}
	if err := s.st.Audit(ctx, storeEvent("firmware-published", req.Version, actor, req.URI)); err != nil {
		return admin.FirmwareInfo{}, err
	}
	s.fw.Store(r)
	// Broadcast on the firmware topic: connected devices get it at once; a
	// device that reports an older version in a hello (it was offline, or
	// reads no broadcasts: a renew-only session) gets it in answer.
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		if err := s.publishFirmware(ctx, conn); err != nil {
			s.log.Warn("firmware not broadcast; devices get it at their next hello", "err", err)
		}
	}
	kid, _ := protocol.KeyID(key.Public())
	return admin.FirmwareInfo{Version: r.Version, Manifest: signed, KeyID: fmt.Sprintf("%x", kid)}, nil
}

func storeEvent(action string, version uint32, actor, detail string) store.Event {
	return store.Event{Action: action, Version: version, Actor: actor, Detail: detail}
}
