// Package online holds fleetd's short-lived online signing key: an
// in-memory P-256 key, certified for a few hours by the HSM-held update key
// through a protocol.Delegation (as TLS delegated credentials, RFC 9345, or
// TUF's online roles do). Downlinks are signed with it, so the hot path
// never waits on the HSM; the HSM signs once per key lifetime.
//
// # Caveats
//
// The private key never touches disk: after a restart fleetd makes a new
// one and republishes the delegation. A Key is immutable and safe for
// concurrent use; Keeper swaps keys atomically.
package online

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
)

// Key is one online signing key and its delegation.
type Key struct {
	priv *ecdsa.PrivateKey
	kid  []byte
	// Delegation is the sealed protocol.Delegation certifying the key.
	Delegation []byte
	NotAfter   time.Time
}

// New makes an online key valid from now for lifetime, certified by update.
func New(codec *protocol.Codec, update crypto.Signer, now time.Time, lifetime time.Duration) (*Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("online: generate: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("online: %w", err)
	}
	kid, err := protocol.KeyID(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	// Backdate a little for devices whose clocks run behind.
	nb := now.Add(-protocol.MaxClockSkew)
	d := protocol.Stamp(&protocol.Delegation{
		Key:       spki,
		NotBefore: uint64(nb.Unix()),
		NotAfter:  uint64(now.Add(lifetime).Unix()),
	}, now, 0)
	sealed, err := codec.Seal(d, update, "")
	if err != nil {
		return nil, fmt.Errorf("online: sign delegation: %w", err)
	}
	return &Key{priv: priv, kid: kid, Delegation: sealed, NotAfter: now.Add(lifetime)}, nil
}

// Seal signs a downlink for device with the online key.
func (k *Key) Seal(codec *protocol.Codec, m protocol.Message, device string) ([]byte, error) {
	return codec.Seal(m, k.priv, device)
}

// KID returns the key id devices see in downlinks.
func (k *Key) KID() []byte { return k.kid }

// Keeper holds the current online key and replaces it before it expires.
type Keeper struct {
	codec    *protocol.Codec
	update   atomic.Pointer[signerBox]
	lifetime time.Duration
	cur      atomic.Pointer[Key]
}

type signerBox struct{ crypto.Signer }

// NewKeeper makes the first key at once.
func NewKeeper(codec *protocol.Codec, update crypto.Signer, now time.Time, lifetime time.Duration) (*Keeper, error) {
	k := &Keeper{codec: codec, lifetime: lifetime}
	k.update.Store(&signerBox{update})
	if _, err := k.Rotate(now); err != nil {
		return nil, err
	}
	return k, nil
}

// Current returns the key in use.
func (k *Keeper) Current() *Key { return k.cur.Load() }

// Due reports whether the current key has used up half its lifetime.
func (k *Keeper) Due(now time.Time) bool {
	return now.After(k.Current().NotAfter.Add(-k.lifetime / 2))
}

// SetUpdate replaces the update key that certifies online keys (after the
// trust anchors rotated it) and makes a new online key under it at once:
// devices that walked to the new anchors refuse delegations by the old one.
func (k *Keeper) SetUpdate(update crypto.Signer, now time.Time) (*Key, error) {
	k.update.Store(&signerBox{update})
	return k.Rotate(now)
}

// Rotate makes a new current key.
func (k *Keeper) Rotate(now time.Time) (*Key, error) {
	nk, err := New(k.codec, k.update.Load().Signer, now, k.lifetime)
	if err != nil {
		return nil, err
	}
	k.cur.Store(nk)
	return nk, nil
}
