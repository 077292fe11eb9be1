// Package escrow keeps every device's data keys: symmetric keys made in
// the HSM, versioned like a Tink keyset, stored only wrapped under an
// HSM-resident key-encryption key (RFC 5649, CKM_AES_KEY_WRAP_PAD).
//
// # Basics
//
// Rotate gives every device that is not revoked a new primary version: the
// old primary becomes decrypt-only, versions beyond the policy's
// decrypt-only count are retired (devices delete them; the escrow keeps
// them), and retired versions older than the policy's destroy delay are
// destroyed (their wrapped key is wiped). Unwrap turns an escrowed version
// back into key material inside the HSM, for sealing (HPKE) to a device or
// to an operator; nothing here stores, returns in an error or logs key
// material. RotateDataKeys is the operator's fleet-wide rotation: Rotate,
// with each new key pushed to its device at once and every version that
// changes state reported through Hooks.OnChange. RotateDataKey is the same
// for one device (a data-key campaign's step), RevertDataKey its rollback:
// the version before is primary again.
//
// # Caveats
//
// The plaintext of a data key exists in fleetd's memory for the moment it
// takes to seal it: the HSM's wrapping mechanisms cannot seal to a device's
// ECDH key. Losing the KEK loses every escrowed key; back up the token.
package escrow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// KEKLabel names the escrow key-encryption key in the token.
const KEKLabel = "keyfleet-escrow-kek"

// KeySize is the size of data keys: AES-128, what HPKE-0 and the
// device's AES-GCM use.
const KeySize = 16

// HSM is the key custody the escrow needs.
type HSM interface {
	GenerateKEK(label string) error
	HasKEK(label string) (bool, error)
	NewDataKey(kek string, size int) (key, wrapped []byte, err error)
	UnwrapDataKey(kek string, wrapped []byte) ([]byte, error)
}

// Store is what the escrow needs of the store.
type Store interface {
	UpdateDevice(ctx context.Context, id string, fn func(d *store.Device) ([]store.Event, error)) (*store.Device, error)
	GetDevice(ctx context.Context, id string) (*store.Device, error)
	ForEachDevice(ctx context.Context, fn func(d *store.Device) error) error
	Audit(ctx context.Context, events ...store.Event) error
}

// Errors of the escrow.
var (
	// ErrNoKey: the device has no such data-key version, or it was destroyed.
	ErrNoKey = errors.New("escrow: no such data key")
	// ErrOperatorKey: the operator's certificate key cannot receive a key.
	ErrOperatorKey = errors.New("escrow: operator key must be ECDSA P-256")
)

// Escrow is the data-key escrow. It is safe for concurrent use.
type Escrow struct {
	hsm    HSM
	st     Store
	policy policy.Source // read at each rotation: an applied policy takes effect at once
	now    func() time.Time
	hooks  atomic.Pointer[Hooks]
}

// Pusher delivers a device's current data keys at once if it is
// connected; the rotation engine satisfies it.
type Pusher interface {
	PushDataKeys(ctx context.Context, device string) error
}

// Hooks connect the escrow to the rest of fleetd. The engine that pushes
// keys reads them from the escrow, so the hooks are set after both exist.
type Hooks struct {
	// Push, if set, delivers new keys to connected devices after
	// RotateDataKeys.
	Push Pusher
	// OnChange, if set, is told of every data-key version that changes
	// state (Slot lifecycle.SlotData, per device).
	OnChange func(lifecycle.Change)
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// SetHooks sets the hooks; call it before the escrow is used.
func (e *Escrow) SetHooks(h Hooks) {
	if h.Logger == nil {
		h.Logger = slog.Default()
	}
	e.hooks.Store(&h)
}

func (e *Escrow) getHooks() *Hooks {
	if h := e.hooks.Load(); h != nil {
		return h
	}
	return &Hooks{Logger: slog.Default()}
}

// New returns an escrow, making the KEK if the token has none; pol gives
// the data-key retention (nil: policy.Default()).
func New(h HSM, st Store, pol policy.Source, now func() time.Time) (*Escrow, error) {
	if pol == nil {
		pol = policy.Default()
	}
	if err := EnsureKEK(h); err != nil {
		return nil, err
	}
	return &Escrow{hsm: h, st: st, policy: pol, now: now}, nil
}

// EnsureKEK makes the key-encryption key in the token if it has none:
// fleetd init calls it, so that every key of a deployment exists (where
// its URI puts it) before fleetd first runs, and New again for a
// deployment made before init did.
func EnsureKEK(h interface {
	GenerateKEK(label string) error
	HasKEK(label string) (bool, error)
}) error {
	ok, err := h.HasKEK(KEKLabel)
	if err != nil {
		return fmt.Errorf("escrow: %w", err)
	}
	if !ok {
		if err := h.GenerateKEK(KEKLabel); err != nil {
			return fmt.Errorf("escrow: %w", err)
		}
	}
	return nil
}

// UnwrapDataKey implements rotation.DataKeySource.
func (e *Escrow) UnwrapDataKey(ctx context.Context, k *store.DataKey) ([]byte, error) {
	if k.Status == store.DataKeyDestroyed || len(k.Wrapped) == 0 {
		return nil, fmt.Errorf("%w: version %d is %v", ErrNoKey, k.Version, k.Status)
	}
	kek := k.KEK
	if kek == "" {
		kek = KEKLabel
	}
	return e.hsm.UnwrapDataKey(kek, k.Wrapped)
}
