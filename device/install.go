package device

import (
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"os"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
)

// Install writes a new keystore into dir: the provisioning credential as
// version 1, the trust anchors and the identity. It refuses to overwrite one.
func Install(dir string, id Identity, key *ecdsa.PrivateKey, certPEM, caPEM, updatePEM []byte) error {
	return InstallTo(&DirStorage{Dir: dir}, id, key, certPEM, caPEM, updatePEM)
}

// InstallTo is Install into any Storage.
func InstallTo(st Storage, id Identity, key *ecdsa.PrivateKey, certPEM, caPEM, updatePEM []byte) error {
	if err := protocol.ValidateDeviceID(id.ID); err != nil {
		return err
	}
	if _, err := st.ReadFile(fileState); err == nil {
		return fmt.Errorf("device: %s already has a keystore", id.ID)
	}
	if _, err := identity.ParsePEM(caPEM); err != nil {
		return fmt.Errorf("device: CA: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	idJSON, err := json.Marshal(id)
	if err != nil {
		return err
	}
	vdir := versionDir(1)
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{vdir + "/key.pem", keyPEM, 0o600},
		{vdir + "/cert.pem", certPEM, 0o644},
		{fileCA, caPEM, 0o644},
		{fileUpdate, updatePEM, 0o644},
		{fileIdentity, idJSON, 0o644},
	} {
		if err := st.WriteFile(f.name, f.data, f.perm); err != nil {
			return fmt.Errorf("device: install: %w", err)
		}
	}
	stJSON, _ := json.Marshal(SlotState{Active: 1})
	return st.WriteFile(fileState, stJSON, 0o600)
}

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
