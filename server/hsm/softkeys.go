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

// kekPath is where SoftKeys keeps the KEK named label.
func (s *SoftKeys) kekPath(label string) string { return filepath.Join(s.dir, label+".kek") }

// checkSoftLabel also keeps a label from naming a file outside the directory.
func checkSoftLabel(label string) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	if filepath.Base(label) != label || label == "." || label == ".." {
		return fmt.Errorf("hsm: soft key label %q is not a plain file name", label)
	}
	return nil
}

// GenerateKEK writes a random 32-byte KEK to a file (0600) in the key
// directory; it refuses to overwrite one (ErrKeyExists), since that would
// orphan every blob wrapped under it. Anyone who can read the file can
// unwrap every escrowed data key: this is the insecure mode.
func (s *SoftKeys) GenerateKEK(label string) error {
	if err := checkSoftLabel(label); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kek := make([]byte, KEKSize)
	defer clear(kek)
	if _, err := rand.Read(kek); err != nil {
		return fmt.Errorf("hsm: soft generate KEK %s: %w", label, err)
	}
	path := s.kekPath(label)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: file://%s", ErrKeyExists, path)
	} else if err != nil {
		return fmt.Errorf("hsm: soft generate KEK %s: %w", label, err)
	}
	_, err = f.Write(kek)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path) // a short KEK file would fail every later use
		return fmt.Errorf("hsm: soft write KEK %s: %w", label, err)
	}
	return nil
}

// HasKEK reports whether the KEK file named label exists.
func (s *SoftKeys) HasKEK(label string) (bool, error) {
	if err := checkSoftLabel(label); err != nil {
		return false, err
	}
	_, err := os.Stat(s.kekPath(label))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("hsm: soft KEK %s: %w", label, err)
	}
	return true, nil
}

// readKEK loads the KEK named label; the caller clears it.
func (s *SoftKeys) readKEK(label string) ([]byte, error) {
	if err := checkSoftLabel(label); err != nil {
		return nil, err
	}
	path := s.kekPath(label)
	kek, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: file://%s", ErrKeyNotFound, path)
	} else if err != nil {
		return nil, fmt.Errorf("hsm: soft read KEK %s: %w", label, err)
	}
	if len(kek) != KEKSize {
		clear(kek)
		return nil, fmt.Errorf("hsm: soft read KEK %s: %d bytes, want %d", label, len(kek), KEKSize)
	}
	return kek, nil
}

// NewDataKey makes a random data key of size bytes (16 or 32) and wraps it
// under the KEK file named kek with WrapPad, the software twin of
// Token.NewDataKey: the blobs are the same format, so escrow moved from a
// soft KEK to a token KEK of the same value would still unwrap. Each call
// counts one operation in Ops.
func (s *SoftKeys) NewDataKey(kek string, size int) (key, wrapped []byte, err error) {
	if err := checkDataKeySize(size); err != nil {
		return nil, nil, err
	}
	k, err := s.readKEK(kek)
	if err != nil {
		return nil, nil, err
	}
	defer clear(k)
	key = make([]byte, size)
	if _, err := rand.Read(key); err != nil {
		return nil, nil, fmt.Errorf("hsm: soft data key: %w", err)
	}
	s.ops.Add(1)
	wrapped, err = WrapPad(k, key)
	if err != nil {
		clear(key)
		return nil, nil, err
	}
	return key, wrapped, nil
}

// UnwrapDataKey reverses NewDataKey with UnwrapPad. Errors are those of
// Token.UnwrapDataKey: ErrUnwrap for a wrong KEK or a damaged blob,
// ErrKeyNotFound for an unknown kek.
func (s *SoftKeys) UnwrapDataKey(kek string, wrapped []byte) ([]byte, error) {
	if err := checkWrappedLen(wrapped); err != nil {
		return nil, err
	}
	k, err := s.readKEK(kek)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	s.ops.Add(1)
	key, err := UnwrapPad(k, wrapped)
	if err != nil {
		return nil, err
	}
	if checkDataKeySize(len(key)) != nil {
		clear(key)
		return nil, fmt.Errorf("%w: not a 16- or 32-byte key", ErrUnwrap)
	}
	return key, nil
}
