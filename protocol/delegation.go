package protocol

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"time"
)

// VerifyDelegation checks a sealed delegation against the update key and returns the
// online public key it certifies, valid at now. Devices call it.
func (c *Codec) VerifyDelegation(sealed []byte, update crypto.PublicKey, now time.Time) (*ecdsa.PublicKey, *Delegation, error) {
	env, err := c.Open(sealed)
	if err != nil {
		return nil, nil, err
	}
	if err := env.Verify(update, ""); err != nil {
		return nil, nil, err
	}
	m, err := c.Message(env)
	if err != nil {
		return nil, nil, err
	}
	d, ok := m.(*Delegation)
	if !ok {
		return nil, nil, fmt.Errorf("%w: got %v, want delegation", ErrMalformed, TypeOf(m))
	}
	t := uint64(now.Unix())
	if t < d.NotBefore || t >= d.NotAfter {
		return nil, nil, fmt.Errorf("%w: delegation valid %d..%d, now %d", ErrExpired, d.NotBefore, d.NotAfter, t)
	}
	pub, err := x509.ParsePKIXPublicKey(d.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: delegated key: %v", ErrMalformed, err)
	}
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("%w: delegated key is not P-256", ErrMalformed)
	}
	return ek, d, nil
}
