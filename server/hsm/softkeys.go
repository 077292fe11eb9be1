package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// SoftKeys keeps P-256 keys as PEM files in a directory: the insecure
// stand-in for a token on machines without one. Anyone who can read the
// directory holds the fleet's CA. fleetd uses it only behind
// --insecure-soft-keys and logs a warning when it does.
//
// It offers the same methods as Token so that fleetd can use either.
type SoftKeys struct {
	dir string
	mu  sync.Mutex
	ops atomic.Uint64
}

// OpenSoftKeys uses dir (created 0700 if missing) as the key directory.
func OpenSoftKeys(dir string) (*SoftKeys, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("hsm: soft keys: %w", err)
	}
	return &SoftKeys{dir: dir}, nil
}

func (s *SoftKeys) path(label string) string { return filepath.Join(s.dir, label+".key.pem") }

// URI names a soft key; it is a file, not a PKCS#11 object.
func (s *SoftKeys) URI(label string) string { return "file://" + s.path(label) }

// Ops returns how many private-key operations (signatures, data keys made
// or unwrapped) the soft keys have performed.
func (s *SoftKeys) Ops() uint64 { return s.ops.Load() }

// Close does nothing; it mirrors Token.Close.
func (s *SoftKeys) Close() error { return nil }

// GenerateP256 creates a key file; it refuses to overwrite one.
func (s *SoftKeys) GenerateP256(label string) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("hsm: soft generate %s: %w", label, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("hsm: soft generate %s: %w", label, err)
	}
	f, err := os.OpenFile(s.path(label), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: %s", ErrKeyExists, s.URI(label))
	} else if err != nil {
		return nil, fmt.Errorf("hsm: soft generate %s: %w", label, err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, fmt.Errorf("hsm: soft write %s: %w", label, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("hsm: soft write %s: %w", label, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("hsm: soft write %s: %w", label, err)
	}
	return &countingSigner{Signer: k, ops: &s.ops}, nil
}

// Signer loads the key named label.
func (s *SoftKeys) Signer(label string) (crypto.Signer, error) {
	b, err := os.ReadFile(s.path(label))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, s.URI(label))
	} else if err != nil {
		return nil, fmt.Errorf("hsm: soft read %s: %w", label, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("hsm: soft read %s: no PEM block", label)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("hsm: soft read %s: %w", label, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("hsm: soft read %s: not a signing key", label)
	}
	return &countingSigner{Signer: signer, ops: &s.ops}, nil
}

var _ io.Closer = (*SoftKeys)(nil)
