//go:build !cgo

package hwkeys

import (
	"crypto"
	"errors"
	"strings"
)

// errNoCgo says how to get a fleet-agent that can use a token.
var errNoCgo = errors.New("hwkeys: --key-store pkcs11: this fleet-agent was built with CGO_ENABLED=0, which leaves PKCS#11 out; " +
	"build it with CGO_ENABLED=1 and the board's C compiler (CGO_ENABLED=1 CC=<the SDK's gcc> GOOS=linux GOARCH=<arch> go build ./cmd/fleet-agent), see docs/operations.md")

// Open refuses: this build has no PKCS#11, which needs cgo.
func Open(raw string) (*Store, error) {
	if !strings.HasPrefix(raw, Scheme) {
		return nil, errors.New("hwkeys: --key-store: want a pkcs11: URI (RFC 7512)")
	}
	return nil, errNoCgo
}

// Store is a token; without cgo Open never returns one.
type Store struct{}

// Generate implements device.HardwareKeys.
func (*Store) Generate(string) (string, crypto.Signer, error) { return "", nil, errNoCgo }

// Signer implements device.HardwareKeys.
func (*Store) Signer(string) (crypto.Signer, error) { return nil, errNoCgo }

// Destroy implements device.HardwareKeys.
func (*Store) Destroy(string) error { return errNoCgo }

// Refs implements device.HardwareKeys.
func (*Store) Refs() ([]string, error) { return nil, errNoCgo }

// Close implements io.Closer.
func (*Store) Close() error { return nil }
