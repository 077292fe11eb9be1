package device

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"
)

// Files of the offline-device features.
const (
	fileBirthKey  = "birth/key.pem"
	fileBirthCert = "birth/cert.pem"
	fileAnchors   = "anchors.json"
	fileDataKeys  = "datakeys.bin"
	// reenrollDir holds the key made for a re-enrolment until the server
	// names its version.
	reenrollDir = "identity/reenroll"
)

// Bundle is everything a factory station installs on a device.
type Bundle struct {
	Identity Identity
	// Key and CertPEM are the first identity credential (version 1).
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	// CAPEM and UpdatePEM are the trust anchors of a deployment without an
	// anchor chain; Anchors, when set, is the current signed anchor set and
	// supersedes them.
	CAPEM, UpdatePEM []byte
	Anchors          []byte
	// BirthKey and BirthCertPEM are the birth credential (IDevID), if the
	// device has one.
	BirthKey     *ecdsa.PrivateKey
	BirthCertPEM []byte
}

// InstallBundle writes a new keystore into st. It refuses to overwrite one.
func InstallBundle(st Storage, b Bundle) error {
	if b.BirthKey != nil {
		kp, err := encodeKey(b.BirthKey)
		if err != nil {
			return err
		}
		if _, err := identity.ParsePEM(b.BirthCertPEM); err != nil {
			return fmt.Errorf("device: birth certificate: %w", err)
		}
		if _, err := st.ReadFile(fileState); err == nil {
			return fmt.Errorf("device: %s already has a keystore", b.Identity.ID)
		}
		if err := st.WriteFile(fileBirthKey, kp, 0o600); err != nil {
			return fmt.Errorf("device: install birth key: %w", err)
		}
		if err := st.WriteFile(fileBirthCert, b.BirthCertPEM, 0o644); err != nil {
			return fmt.Errorf("device: install birth certificate: %w", err)
		}
	}
	if len(b.Anchors) > 0 {
		a, err := json.Marshal(anchorState{Set: b.Anchors})
		if err != nil {
			return err
		}
		if err := st.WriteFile(fileAnchors, a, 0o644); err != nil {
			return fmt.Errorf("device: install anchors: %w", err)
		}
	}
	// The state file, written last by InstallTo, marks a complete install.
	return InstallTo(st, b.Identity, b.Key, b.CertPEM, b.CAPEM, b.UpdatePEM)
}

// BirthCredential returns the device's birth credential (IDevID) as a TLS
// client certificate, or ErrNoCredential.
func (ks *Keystore) BirthCredential() (*ecdsa.PrivateKey, *x509.Certificate, error) {
	kb, err := ks.st.ReadFile(fileBirthKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: birth credential", ErrNoCredential)
	} else if err != nil {
		return nil, nil, fmt.Errorf("device: birth key: %w", err)
	}
	k, err := decodeKey(kb)
	if err != nil {
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
// certificate for. Its version is unknown until the server answers.
func (ks *Keystore) BeginReenroll() (*ecdsa.PrivateKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if b, err := ks.st.ReadFile(reenrollDir + "/key.pem"); err == nil {
		if k, err := decodeKey(b); err == nil && !ks.holdsKey(k) {
			return k, nil
		}
		// A key left behind by a crash after it was adopted: it is some
		// version's key now, and the server would refuse it as reused.
	}
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	p, err := encodeKey(k)
	if err != nil {
		return nil, err
	}
	if err := ks.write(reenrollDir+"/key.pem", p, 0o600); err != nil {
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
	kb, err := ks.st.ReadFile(reenrollDir + "/key.pem")
	if err != nil {
		return nil, fmt.Errorf("%w: no re-enrolment under way", ErrNoCredential)
	}
	k, err := decodeKey(kb)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("device: re-enrolled certificate: %w", err)
	}
	id, err := identity.Verify(c, ks.roots, now)
	if err != nil {
		return nil, fmt.Errorf("device: re-enrolled certificate: %w", err)
	}
	if id.Role != identity.RoleDevice || id.Name != ks.id.ID {
		return nil, fmt.Errorf("device: re-enrolled certificate names %s", id)
	}
	if !k.PublicKey.Equal(c.PublicKey) {
		return nil, errors.New("device: re-enrolled certificate is not for the re-enrolment key")
	}
	vdir := versionDir(v)
	if err := ks.write(vdir+"/key.pem", kb, 0o600); err != nil {
		return nil, err
	}
	if err := ks.write(vdir+"/cert.pem", identity.EncodePEM(c), 0o644); err != nil {
		return nil, err
	}
	s := ks.state
	if s.Pending != 0 && s.Pending != v {
		_ = ks.st.RemoveAll(versionDir(s.Pending)) // an abandoned rotation
	}
	s.Pending, s.PendingRID = v, rid
	if err := ks.saveState(s); err != nil {
		return nil, err
	}
	_ = ks.st.RemoveAll(reenrollDir)
	return c, nil
}

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

// DataKeys returns the stored data keyset (datakey encoding), or nil.
func (ks *Keystore) DataKeys() []byte {
	b, err := ks.st.ReadFile(fileDataKeys)
	if err != nil {
		return nil
	}
	return b
}

// SaveDataKeys stores the data keyset atomically.
func (ks *Keystore) SaveDataKeys(b []byte) error {
	if err := ks.write(fileDataKeys, b, 0o600); err != nil {
		return fmt.Errorf("device: save data keys: %w", err)
	}
	return nil
}

// holdsKey reports whether k is the key of a version the keystore holds.
// The caller holds ks.mu.
func (ks *Keystore) holdsKey(k *ecdsa.PrivateKey) bool {
	for _, v := range []uint32{ks.state.Active, ks.state.Pending, ks.state.Previous} {
		if v == 0 {
			continue
		}
		if hk, err := ks.Key(v); err == nil && hk.PublicKey.Equal(&k.PublicKey) {
			return true
		}
	}
	return false
}
