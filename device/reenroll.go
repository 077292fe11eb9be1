package device

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
)

// Event kinds of re-enrolment.
const (
	EventReenrolling EventKind = "reenrolling"   // connected with the birth credential to re-enrol
	EventReenrolled  EventKind = "reenrolled"    // a certificate for a new identity came back (Version)
	EventBirthRefuse EventKind = "birth-refused" // the broker refused the birth credential too
)

// Files of re-enrolment: the birth credential (IDevID) installed at the
// factory and the key a re-enrolment asks a certificate for.
const (
	birthDir      = "birth"
	fileBirthKey  = birthDir + "/" + fileKeyPEM
	fileBirthCert = "birth/cert.pem"
	// reenrollDir holds the key made for a re-enrolment until the server
	// names its version.
	reenrollDir = "identity/reenroll"
)

// BirthCredential returns the device's birth credential (IDevID) as a TLS
// client certificate, or ErrNoCredential. Its key is a PEM file or, with
// a token, a reference to the key in it.
func (ks *Keystore) BirthCredential() (crypto.Signer, *x509.Certificate, error) {
	k, err := ks.keyIn(birthDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: birth credential", ErrNoCredential)
	} else if err != nil {
		return nil, nil, fmt.Errorf("device: birth key: %w", err)
	}
	cb, err := ks.st.ReadFile(fileBirthCert)
	if err != nil {
		return nil, nil, fmt.Errorf("device: birth certificate: %w", err)
	}
	cs, err := identity.ParsePEM(cb)
	if err != nil {
		return nil, nil, fmt.Errorf("device: birth certificate: %w", err)
	}
	return k, cs[0], nil
}

// BeginReenroll makes (or reloads) the key a re-enrolment asks a
// certificate for, in the token when the keystore has one. Its version is
// unknown until the server answers.
func (ks *Keystore) BeginReenroll() (crypto.Signer, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if k, err := ks.keyIn(reenrollDir); err == nil {
		if !ks.holdsKey(k) {
			return k, nil
		}
		// A key left behind by a crash after it was adopted: it is some
		// version's key now, and the server would refuse it as reused.
		// Only its directory goes: the adopting version names the key.
		_ = ks.st.RemoveAll(reenrollDir)
	}
	k, err := ks.newKey(reenrollDir, "identity/reenroll")
	if err != nil {
		return nil, fmt.Errorf("device: re-enrolment key: %w", err)
	}
	return k, nil
}

// AdoptReenrolled checks that der certifies the re-enrolment key for this
// device under the fleet CA and stores it as pending version v, ready to be
// tried at the next connect: the same path a rotation's certificate takes.
func (ks *Keystore) AdoptReenrolled(v uint32, rid, der []byte, now time.Time) (*x509.Certificate, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if v <= ks.state.Active {
		return nil, fmt.Errorf("device: re-enrolled version %d is not newer than active %d", v, ks.state.Active)
	}
	k, err := ks.keyIn(reenrollDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no re-enrolment under way", ErrNoCredential)
	} else if err != nil {
		return nil, fmt.Errorf("device: re-enrolment key: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("device: re-enrolled certificate: %w", err)
	}
	roots, inters := ks.certPools()
	id, err := identity.VerifyChain(c, roots, inters, now)
	if err != nil {
		return nil, fmt.Errorf("device: re-enrolled certificate: %w", err)
	}
	if id.Role != identity.RoleDevice || id.Name != ks.id.ID {
		return nil, fmt.Errorf("device: re-enrolled certificate names %s", id)
	}
	if !samePublic(k, c.PublicKey) {
		return nil, errors.New("device: re-enrolled certificate is not for the re-enrolment key")
	}
	vdir := versionDir(v)
	for _, f := range []string{fileKeyRef, fileKeyPEM} {
		if kb, err := ks.st.ReadFile(reenrollDir + "/" + f); err == nil {
			if err := ks.write(vdir+"/"+f, kb, 0o600); err != nil {
				return nil, err
			}
		}
	}
	if err := ks.write(vdir+"/cert.pem", identity.EncodePEM(c), 0o644); err != nil {
		return nil, err
	}
	s := ks.state
	if s.Pending != 0 && s.Pending != v {
		_ = ks.removeVersion(s.Pending) // an abandoned rotation
	}
	s.Pending, s.PendingRID = v, rid
	if err := ks.saveState(s); err != nil {
		return nil, err
	}
	_ = ks.st.RemoveAll(reenrollDir)
	return c, nil
}

// holdsKey reports whether k is the key of a version the keystore holds.
// The caller holds ks.mu.
func (ks *Keystore) holdsKey(k crypto.Signer) bool {
	for _, v := range []uint32{ks.state.Active, ks.state.Pending, ks.state.Previous} {
		if v == 0 {
			continue
		}
		if hk, err := ks.Signer(v); err == nil && samePublic(hk, k.Public()) {
			return true
		}
	}
	return false
}

// reenroll connects with the birth credential, which reaches only the
// re-enrolment topics, and asks for a new identity. It returns errReconnect
// once the certificate is stored as pending: the next dial uses it.
func (a *Agent) reenroll(ctx context.Context, gen uint64) error {
	bkey, bcert, err := a.ks.BirthCredential()
	if err != nil {
		return err
	}
	addr, host, err := a.brokerAddr()
	if err != nil {
		return err
	}
	if a.opts.ReenrollBroker != "" { // an external broker's birth listener
		addr = a.opts.ReenrollBroker
		if host, _, err = net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("device: re-enrolment broker address %q: %w", addr, err)
		}
	}
	id := a.ks.ID().ID
	conn, err := mqttc.Dial(ctx, mqttc.Options{
		Broker:   addr,
		ClientID: id,
		TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{bcert.Raw}, PrivateKey: bkey, Leaf: bcert}},
			RootCAs: a.ks.Roots(), ServerName: host, MinVersion: tls.VersionTLS12, CurvePreferences: deviceCurves,
			Time: a.opts.Now},
		Subscriptions: []string{a.topics.ReenrollDown(id)},
		OnMessage: func(topic string, payload []byte) {
			select {
			case a.inbox <- inMsg{topic: topic, payload: append([]byte(nil), payload...), gen: gen}:
			case <-ctx.Done():
			}
		},
		OnLost: func(err error) {
			select {
			case a.inbox <- inMsg{lost: err, gen: gen}:
			case <-ctx.Done():
			}
		},
		KeepAlive: 5 * time.Minute,
	})
	if err != nil {
		if errors.Is(err, mqttc.ErrRefused) {
			a.emit(EventBirthRefuse, 0, err.Error())
		}
		return fmt.Errorf("device: connect with birth credential: %w", err)
	}
	defer conn.Close()
	a.emit(EventReenrolling, 0, "")
	key, err := a.ks.BeginReenroll()
	if err != nil {
		return err
	}
	csr, err := CSR(id, key)
	if err != nil {
		return err
	}
	send := func() error {
		m := protocol.Stamp(&protocol.Reenroll{CSR: csr, Anchors: a.AnchorVersion()}, a.opts.Now(), 0)
		m.RID = protocol.NewID()
		b, err := a.codec.Seal(m, bkey, id)
		if err != nil {
			return err
		}
		return conn.Publish(ctx, a.topics.Reenroll(id), b)
	}
	if err := send(); err != nil {
		return err
	}
	a.log.Info("re-enrolling with the birth credential")
	timer := time.NewTimer(a.opts.StepTimeout)
	defer timer.Stop()
	for tries := 1; ; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if tries >= 3 {
				return errors.New("device: no answer to re-enrolment")
			}
			tries++
			if err := send(); err != nil {
				return err
			}
			timer.Reset(a.opts.StepTimeout)
		case in := <-a.inbox:
			if in.gen != gen {
				continue
			}
			if in.lost != nil {
				return fmt.Errorf("device: re-enrolment session lost: %w", in.lost)
			}
			env, err := a.codec.Open(in.payload)
			if err != nil || env.IsSigned() {
				// Signed answers are errors from the online key, which this
				// session cannot check: the timer retries.
				continue
			}
			msg, err := a.codec.Message(env)
			if err != nil {
				continue
			}
			switch msg := msg.(type) {
			case *protocol.Anchors:
				if err := a.onAnchors(ctx, msg, false, true); err != nil {
					return err
				}
			case *protocol.Cert:
				der, err := protocol.ExpandLeaf(msg.Cert, key.Public())
				if err != nil {
					a.log.Warn("re-enrolled certificate refused", "err", err)
					continue
				}
				if _, err := a.ks.AdoptReenrolled(msg.Version, msg.RID, der, a.opts.Now()); err != nil {
					a.log.Warn("re-enrolled certificate refused", "err", err)
					continue
				}
				a.log.Info("re-enrolled", "version", msg.Version)
				a.emit(EventReenrolled, msg.Version, "")
				return errReconnect
			}
		}
	}
}
