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
	// Delegation is the sealed protocol.Delegation certifying the key
	// under the published anchors' update key.
	Delegation []byte
	NotAfter   time.Time
	// next is the same key certified by the update key of a prepared
	// anchor set (version nextFrom), while a staged roll-out is under way:
	// devices that walked to it refuse Delegation.
	next     []byte
	nextFrom uint32
}

// DelegationFor returns the delegation a device holding anchor set
// version anchors verifies: the one under the prepared set's update key
// once it reached that set, the published one otherwise.
func (k *Key) DelegationFor(anchors uint32) []byte {
	if k.next != nil && anchors >= k.nextFrom {
		return k.next
	}
	return k.Delegation
}

// NextDelegation returns the delegation under the prepared anchor set's
// update key and that set's version, or nil and 0 when none is prepared.
func (k *Key) NextDelegation() ([]byte, uint32) { return k.next, k.nextFrom }

// New makes an online key valid from now for lifetime, certified by update.
func New(codec *protocol.Codec, update crypto.Signer, now time.Time, lifetime time.Duration) (*Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("online: generate: %w", err)
	}
	kid, err := protocol.KeyID(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	k := &Key{priv: priv, kid: kid, NotAfter: now.Add(lifetime)}
	if k.Delegation, err = k.certify(codec, update, now); err != nil {
		return nil, err
	}
	return k, nil
}

// certify seals a delegation of k by update, valid from now (backdated a
// little for devices whose clocks run behind) to k.NotAfter.
func (k *Key) certify(codec *protocol.Codec, update crypto.Signer, now time.Time) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("online: %w", err)
	}
	d := protocol.Stamp(&protocol.Delegation{
		Key:       spki,
		NotBefore: uint64(now.Add(-protocol.MaxClockSkew).Unix()),
		NotAfter:  uint64(k.NotAfter.Unix()),
	}, now, 0)
	sealed, err := codec.Seal(d, update, "")
	if err != nil {
		return nil, fmt.Errorf("online: sign delegation: %w", err)
	}
	return sealed, nil
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
	next     atomic.Pointer[signerBox] // a prepared set's update key, or nil
	lifetime time.Duration
	cur      atomic.Pointer[Key]
}

type signerBox struct {
	crypto.Signer
	version uint32 // the anchor set it belongs to (next only)
}

// NewKeeper makes the first key at once.
func NewKeeper(codec *protocol.Codec, update crypto.Signer, now time.Time, lifetime time.Duration) (*Keeper, error) {
	k := &Keeper{codec: codec, lifetime: lifetime}
	k.update.Store(&signerBox{Signer: update})
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
// It ends a staged roll-out: the next update key, if any, is forgotten.
func (k *Keeper) SetUpdate(update crypto.Signer, now time.Time) (*Key, error) {
	k.update.Store(&signerBox{Signer: update})
	k.next.Store(nil)
	return k.Rotate(now)
}

// SetNext has the current key, and every key after it, certified also by
// the update key of the prepared anchor set version: devices a staged
// roll-out gave that set verify the same online key through it, while the
// others keep the delegation of the published set. The key itself does
// not change, so no device needs a new delegation for it.
func (k *Keeper) SetNext(update crypto.Signer, version uint32, now time.Time) (*Key, error) {
	cur := k.Current()
	next, err := cur.certify(k.codec, update, now)
	if err != nil {
		return nil, err
	}
	nk := *cur
	nk.next, nk.nextFrom = next, version
	k.next.Store(&signerBox{Signer: update, version: version})
	k.cur.Store(&nk)
	return &nk, nil
}

// Rotate makes a new current key.
func (k *Keeper) Rotate(now time.Time) (*Key, error) {
	nk, err := New(k.codec, k.update.Load().Signer, now, k.lifetime)
	if err != nil {
		return nil, err
	}
	if n := k.next.Load(); n != nil {
		if nk.next, err = nk.certify(k.codec, n.Signer, now); err != nil {
			return nil, err
		}
		nk.nextFrom = n.version
	}
	k.cur.Store(nk)
	return nk, nil
}
