package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/protocol"
)

// fileAnchors holds the stored anchor set (anchorState, JSON).
const fileAnchors = "anchors.json"

// EventAnchors: the agent walked to a newer anchor set (Version).
const EventAnchors EventKind = "anchors"

// anchorState is the stored trust-anchor set: the signed set itself (from
// which the root, update and firmware keys are read) and the root of the
// set before it, still trusted for the server's TLS certificate until the
// server moved on.
type anchorState struct {
	Set      []byte `json:"set"`
	PrevRoot []byte `json:"prev_root,omitempty"`
}

// AnchorSet returns the stored signed anchor set, or nil for a keystore
// installed without one.
func (ks *Keystore) AnchorSet() []byte {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return append([]byte(nil), ks.anchors.Set...)
}

// SetAnchors stores a new current anchor set, verified by the caller (the
// agent walks the chain), and makes root the root new certificates are
// checked against, keeping the previous root for the server's TLS
// certificate; update becomes the key delegations are checked against.
// One atomic write: a crash leaves the old set or the new one.
func (ks *Keystore) SetAnchors(set []byte, root *x509.Certificate, update any) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	st := anchorState{Set: set}
	if old := ks.rootList; len(old) > 0 && !old[0].Equal(root) {
		st.PrevRoot = old[0].Raw
	} else if len(old) > 1 {
		st.PrevRoot = old[1].Raw
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := ks.write(fileAnchors, b, 0o644); err != nil {
		return fmt.Errorf("device: save anchors: %w", err)
	}
	ks.anchors = st
	ks.setRoots(root, st.PrevRoot)
	ks.update = update
	return nil
}

// setRoots makes the pool the root and, if set, the previous one.
func (ks *Keystore) setRoots(root *x509.Certificate, prev []byte) {
	list := []*x509.Certificate{root}
	if p, err := x509.ParseCertificate(prev); err == nil && len(prev) > 0 {
		list = append(list, p)
	}
	pool := x509.NewCertPool()
	for _, c := range list {
		pool.AddCert(c)
	}
	ks.rootList, ks.roots = list, pool
}

// setIssuers makes the anchor set's issuer certificates (an external CA
// such as step-ca) trusted for the device's own new certificates. Called
// with ks.mu held.
func (ks *Keystore) setIssuers(s *anchors.Set) error {
	_, inters, err := s.IssuerPools() // validates: a CA certificate each
	if err != nil {
		return err
	}
	var roots []*x509.Certificate
	for _, der := range s.Issuers {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("device: issuer certificate: %w", err)
		}
		if bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil {
			roots = append(roots, c)
		}
	}
	if len(s.Issuers) == 0 {
		inters = nil
	}
	ks.issuerRoots, ks.issuerInters = roots, inters
	return nil
}

// certPools returns the pools a new certificate of this device is checked
// against: the fleet roots plus the anchor set's issuer roots, and the
// issuer's intermediates. Called with ks.mu held.
func (ks *Keystore) certPools() (roots, intermediates *x509.CertPool) {
	if len(ks.issuerRoots) == 0 && ks.issuerInters == nil {
		return ks.roots, nil
	}
	roots = x509.NewCertPool()
	for _, c := range ks.rootList {
		roots.AddCert(c)
	}
	for _, c := range ks.issuerRoots {
		roots.AddCert(c)
	}
	return roots, ks.issuerInters
}

// loadAnchors makes the stored anchor set, if the keystore has one, the
// agent's trust. A keystore installed before anchor chains has none: its
// trust is the CA and update key it was installed with until a version 1
// naming exactly those arrives (adoptFirstSet).
func (a *Agent) loadAnchors() error {
	b := a.ks.AnchorSet()
	if len(b) == 0 {
		return nil
	}
	cur, err := anchors.Parse(b)
	if err != nil {
		return fmt.Errorf("device: stored anchors: %w", err)
	}
	return a.useAnchors(cur, false)
}

// useAnchors makes cur the agent's trust: its root for certificates and
// the server's TLS certificate, its update key for delegations.
func (a *Agent) useAnchors(cur *anchors.Signed, persist bool) error {
	root, err := cur.RootCert()
	if err != nil {
		return err
	}
	upd, err := cur.UpdatePublicKey()
	if err != nil {
		return err
	}
	kid, err := protocol.KeyID(upd)
	if err != nil {
		return err
	}
	a.ks.mu.Lock()
	err = a.ks.setIssuers(cur.Set)
	a.ks.mu.Unlock()
	if err != nil {
		return err
	}
	if persist {
		if err := a.ks.SetAnchors(cur.Raw, root, upd); err != nil {
			return err
		}
		// A new update key ends the online key it certified: whatever that
		// key signed, even with a long delegation, is not trusted any more.
		if old := a.updateKID.Load(); old != nil && !bytes.Equal(*old, kid) {
			if err := a.dropDelegations(); err != nil {
				return err
			}
		}
	} else {
		a.ks.mu.Lock()
		a.ks.setRoots(root, a.ks.anchors.PrevRoot)
		a.ks.update = upd
		a.ks.mu.Unlock()
	}
	a.anchors.Store(cur)
	a.updateKID.Store(&kid)
	return nil
}

// AnchorVersion returns the version of the anchor set the agent trusts.
func (a *Agent) AnchorVersion() uint32 {
	if c := a.anchors.Load(); c != nil {
		return c.Version
	}
	return 0
}

// onAnchors walks from the current set through the sets received, one
// step at a time and at most opts.AnchorSteps of them; any fault (a
// skipped version, a fork, a revoked or unknown signer, a rollback, a
// chain too long) refuses the whole message and the current set stays.
//
// With report, a hello follows a walk when more sets may follow (a full
// message) and, best effort, when the sets were addressed to this device
// (an answer to its hello, or a staged roll-out handing it the next set),
// so fleetd records the version it holds at once. A walk on the live broadcast is
// not reported: every connected device would say hello in the same second.
func (a *Agent) onAnchors(ctx context.Context, m *protocol.Anchors, report, addressed bool) error {
	cur := a.anchors.Load()
	if cur == nil {
		// A keystore installed before anchor chains. Its trust is the CA
		// and update key it was installed with: a version 1 that names
		// exactly those is the same trust, signed; it becomes the start of
		// the walk.
		first, err := a.adoptFirstSet(m.Sets)
		if err != nil {
			return a.reject("anchors", err)
		}
		if first == nil {
			return nil
		}
		cur = first
	}
	next, err := anchors.Walk(cur, m.Sets, anchors.WalkOptions{MaxSteps: a.opts.AnchorSteps})
	if err != nil {
		return a.reject("anchors", err)
	}
	if next == cur {
		return nil // up to date
	}
	if err := a.useAnchors(next, true); err != nil {
		return err
	}
	a.log.Info("trust anchors updated", "from", cur.Version, "to", next.Version)
	a.emit(EventAnchors, next.Version, "")
	if report && len(m.Sets) >= a.opts.AnchorSteps {
		// A full message: more sets may follow the last one. Reporting
		// the version reached asks for them.
		return a.hello(ctx)
	}
	if report && addressed {
		// Tells fleetd where the device is. Best effort: the walk stands
		// and the next hello (at the latest ReportEvery) reports it too.
		if err := a.hello(ctx); err != nil {
			a.log.Warn("anchors walked but not reported", "version", next.Version, "err", err)
		}
	}
	return nil
}

// adoptFirstSet finds version 1 among sets and checks that its root and
// update key are the ones this keystore was installed with. It returns nil
// when sets carry no version 1.
func (a *Agent) adoptFirstSet(sets [][]byte) (*anchors.Signed, error) {
	for _, b := range sets {
		s, err := anchors.Parse(b)
		if err != nil || s.Version != 1 {
			continue
		}
		root, err := s.RootCert()
		if err != nil {
			return nil, err
		}
		upd, err := s.UpdatePublicKey()
		if err != nil {
			return nil, err
		}
		a.ks.mu.Lock()
		installedRoot := a.ks.rootList[0]
		installedUpd, _ := a.ks.update.(interface{ Equal(crypto.PublicKey) bool })
		a.ks.mu.Unlock()
		if !installedRoot.Equal(root) || installedUpd == nil || !installedUpd.Equal(upd) {
			return nil, errors.New("version 1 of the anchors does not name the CA and update key this device was installed with")
		}
		first, err := anchors.TrustOnInstall(b)
		if err != nil {
			return nil, err
		}
		if err := a.useAnchors(first, true); err != nil {
			return nil, err
		}
		a.log.Info("anchor chain adopted from the installed CA and update key")
		return first, nil
	}
	return nil, nil
}
