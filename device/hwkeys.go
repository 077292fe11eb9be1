package device

import (
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
)

// HardwareKeys keeps a device's private keys in a token (a TPM 2.0 or a
// secure element behind PKCS#11), where they are generated and used and
// from which they never leave. The keystore asks it for a new key per
// identity version and keeps only the reference it returns, in the
// version's directory next to the certificate; the certificates and the
// rest of the state stay in files. Package device/hwkeys implements it
// over PKCS#11 in builds with cgo.
type HardwareKeys interface {
	// Generate makes a new P-256 key pair inside the token, named after
	// name ("identity/v3") so an operator listing the token sees what each
	// object is, and returns the reference that finds it again.
	Generate(name string) (ref string, key crypto.Signer, err error)
	// Signer finds the key ref names, or fails wrapping fs.ErrNotExist.
	Signer(ref string) (crypto.Signer, error)
	// Destroy deletes the key pair ref names from the token.
	Destroy(ref string) error
	// Refs lists the references of every key this device holds in the
	// token, so that keys nothing names any more (a crash between a key's
	// generation and the state naming it) can be destroyed.
	Refs() ([]string, error)
}

// ErrKeyInHardware: the key lives in a token and has no software form; use
// Keystore.Signer.
var ErrKeyInHardware = errors.New("device: key is held in hardware")

// Files of one key: a PEM private key, or the token reference of a key in
// hardware.
const (
	fileKeyPEM = "key.pem"
	fileKeyRef = "key.ref"
)

// UseHardware makes the keystore generate every new key inside hw, and
// destroys the keys hw holds for this device that nothing in the keystore
// names any more: those of a rotation interrupted between the key's
// generation and its reference being stored. Keys already in PEM files
// (the identity made at provisioning) stay usable until retired.
func (ks *Keystore) UseHardware(hw HardwareKeys, log *slog.Logger) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.hw = hw
	refs, err := hw.Refs()
	if err != nil {
		return fmt.Errorf("device: keystore %s: list token keys: %w", ks.id.ID, err)
	}
	named := map[string]bool{}
	dirs := []string{reenrollDir, "birth"}
	for _, v := range []uint32{ks.state.Active, ks.state.Pending, ks.state.Previous} {
		if v != 0 {
			dirs = append(dirs, versionDir(v))
		}
	}
	for _, d := range dirs {
		if b, err := ks.st.ReadFile(d + "/" + fileKeyRef); err == nil {
			named[strings.TrimSpace(string(b))] = true
		}
	}
	for _, r := range refs {
		if named[r] {
			continue
		}
		if err := hw.Destroy(r); err != nil {
			return fmt.Errorf("device: keystore %s: destroy orphan key %s: %w", ks.id.ID, r, err)
		}
		if log != nil {
			log.Info("destroyed a token key nothing names", "device", ks.id.ID, "ref", r)
		}
	}
	return nil
}

// Signer returns the private key of version v, from the token or from its
// PEM file.
func (ks *Keystore) Signer(v uint32) (crypto.Signer, error) {
	k, err := ks.keyIn(versionDir(v))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: key v%d", ErrNoCredential, v)
	} else if err != nil {
		return nil, fmt.Errorf("device: key v%d: %w", v, err)
	}
	return k, nil
}

// keyIn loads the key kept in dir: a token reference or a PEM file. A
// missing key wraps fs.ErrNotExist.
func (ks *Keystore) keyIn(dir string) (crypto.Signer, error) {
	if ref, err := ks.st.ReadFile(dir + "/" + fileKeyRef); err == nil {
		if ks.hw == nil {
			return nil, fmt.Errorf("%w, and the agent runs without --key-store", ErrKeyInHardware)
		}
		return ks.hw.Signer(strings.TrimSpace(string(ref)))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	b, err := ks.st.ReadFile(dir + "/" + fileKeyPEM)
	if err != nil {
		return nil, err
	}
	return decodeKey(b)
}

// newKey makes a key for dir, in the token named name when the keystore
// has one, and stores it (or its reference) in dir.
func (ks *Keystore) newKey(dir, name string) (crypto.Signer, error) {
	if ks.hw == nil {
		k, err := NewKey()
		if err != nil {
			return nil, err
		}
		p, err := encodeKey(k)
		if err != nil {
			return nil, err
		}
		if err := ks.write(dir+"/"+fileKeyPEM, p, 0o600); err != nil {
			return nil, err
		}
		return k, nil
	}
	ref, k, err := ks.hw.Generate(name)
	if err != nil {
		return nil, err
	}
	if err := ks.write(dir+"/"+fileKeyRef, []byte(ref+"\n"), 0o600); err != nil {
		_ = ks.hw.Destroy(ref)
		return nil, err
	}
	_ = ks.st.RemoveAll(dir + "/" + fileKeyPEM) // a software key of an abandoned attempt
	return k, nil
}

// removeVersion deletes version v's directory and, when its key is in the
// token, the key. The directory goes first: a crash in between leaves a
// token key nothing names, which UseHardware destroys at the next start.
func (ks *Keystore) removeVersion(v uint32) error {
	return ks.removeKeyDir(versionDir(v))
}

func (ks *Keystore) removeKeyDir(dir string) error {
	ref, rerr := ks.st.ReadFile(dir + "/" + fileKeyRef)
	if err := ks.st.RemoveAll(dir); err != nil {
		return fmt.Errorf("device: remove %s: %w", dir, err)
	}
	if rerr == nil && ks.hw != nil {
		if err := ks.hw.Destroy(strings.TrimSpace(string(ref))); err != nil {
			return fmt.Errorf("device: destroy the token key of %s: %w", dir, err)
		}
	}
	return nil
}

// samePublic reports whether k's public key is pub.
func samePublic(k crypto.Signer, pub crypto.PublicKey) bool {
	p, ok := k.Public().(*ecdsa.PublicKey)
	return ok && p.Equal(pub)
}
