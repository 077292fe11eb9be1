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
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	return installTo(st, id, fileKeyPEM, keyPEM, certPEM, caPEM, updatePEM)
}

// installTo writes a keystore whose version 1 key is keyData in keyFile
// (a PEM key, or a token reference).
func installTo(st Storage, id Identity, keyFile string, keyData, certPEM, caPEM, updatePEM []byte) error {
	if err := protocol.ValidateDeviceID(id.ID); err != nil {
		return err
	}
	if _, err := st.ReadFile(fileState); err == nil {
		return fmt.Errorf("device: %s already has a keystore", id.ID)
	}
	if _, err := identity.ParsePEM(caPEM); err != nil {
		return fmt.Errorf("device: CA: %w", err)
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
		{vdir + "/" + keyFile, keyData, 0o600},
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
	// KeyRef and BirthKeyRef, when set, stand for Key and BirthKey: the
	// references (HardwareKeys.Generate) of keys generated in the
	// device's token, so that no private key is ever in a file.
	KeyRef, BirthKeyRef string
}

// InstallBundle writes a new keystore into st. It refuses to overwrite one.
func InstallBundle(st Storage, b Bundle) error {
	if b.BirthKey != nil || b.BirthKeyRef != "" {
		bfile, kp := fileBirthKey, []byte(b.BirthKeyRef+"\n")
		if b.BirthKeyRef != "" {
			bfile = birthDir + "/" + fileKeyRef
		} else {
			var err error
			if kp, err = encodeKey(b.BirthKey); err != nil {
				return err
			}
		}
		if _, err := identity.ParsePEM(b.BirthCertPEM); err != nil {
			return fmt.Errorf("device: birth certificate: %w", err)
		}
		if _, err := st.ReadFile(fileState); err == nil {
			return fmt.Errorf("device: %s already has a keystore", b.Identity.ID)
		}
		if err := st.WriteFile(bfile, kp, 0o600); err != nil {
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
	// The state file, written last by installTo, marks a complete install.
	if b.KeyRef != "" {
		return installTo(st, b.Identity, fileKeyRef, []byte(b.KeyRef+"\n"), b.CertPEM, b.CAPEM, b.UpdatePEM)
	}
	return InstallTo(st, b.Identity, b.Key, b.CertPEM, b.CAPEM, b.UpdatePEM)
}
