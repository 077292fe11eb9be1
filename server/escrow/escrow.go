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
// material. RotateDataKeys is the operator's rotation: Rotate, with each
// new key pushed to its device at once and every version that changes
// state reported through Hooks.OnChange.
//
// # Caveats
//
// The plaintext of a data key exists in fleetd's memory for the moment it
// takes to seal it: the HSM's wrapping mechanisms cannot seal to a device's
// ECDH key. Losing the KEK loses every escrowed key; back up the token.
package escrow

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/protocol"
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
	policy policy.Policy
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

// New returns an escrow, making the KEK if the token has none.
func New(h HSM, st Store, pol policy.Policy, now func() time.Time) (*Escrow, error) {
	ok, err := h.HasKEK(KEKLabel)
	if err != nil {
		return nil, fmt.Errorf("escrow: %w", err)
	}
	if !ok {
		if err := h.GenerateKEK(KEKLabel); err != nil {
			return nil, fmt.Errorf("escrow: %w", err)
		}
	}
	return &Escrow{hsm: h, st: st, policy: pol.WithDefaults(), now: now}, nil
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

// rotateWorkers bounds concurrent device updates in Rotate: enough for the
// store's group commits to fill, few enough for the HSM's sessions.
const rotateWorkers = 16

// Result reports a Rotate.
type Result struct {
	Rotated []string // devices that got a new version
	Failed  map[string]error
}

// RotateDataKeys is the operator's data-key rotation: Rotate, with every
// new key pushed at once to its device if it is connected (the others get
// theirs at their next hello).
func (e *Escrow) RotateDataKeys(ctx context.Context, actor string) (Result, error) {
	h := e.getHooks()
	return e.Rotate(ctx, actor, func(device string) {
		if h.Push == nil {
			return
		}
		if err := h.Push.PushDataKeys(ctx, device); err != nil {
			h.Logger.Debug("data key not pushed; the device gets it at its next hello", "device", device, "err", err)
		}
	})
}

// Rotate gives every device that is not revoked a new primary data key and
// moves the older versions along their life cycle. Each device is one
// durable, audited update; after it, onRotated (if set) is called so the
// caller can push the key to the device at once.
func (e *Escrow) Rotate(ctx context.Context, actor string, onRotated func(device string)) (Result, error) {
	var ids []string
	if err := e.st.ForEachDevice(ctx, func(d *store.Device) error {
		if !d.Revoked {
			ids = append(ids, d.ID)
		}
		return nil
	}); err != nil {
		return Result{}, fmt.Errorf("escrow: list devices: %w", err)
	}
	res := Result{Failed: map[string]error{}}
	var mu sync.Mutex
	sem := make(chan struct{}, rotateWorkers)
	var wg sync.WaitGroup
	for _, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := e.rotateOne(ctx, id, actor)
			mu.Lock()
			if err != nil {
				res.Failed[id] = err
			} else {
				res.Rotated = append(res.Rotated, id)
			}
			mu.Unlock()
			if err == nil && onRotated != nil {
				onRotated(id)
			}
		}()
	}
	wg.Wait()
	return res, nil
}

func (e *Escrow) rotateOne(ctx context.Context, id, actor string) error {
	// The key is made and wrapped before the transaction, which may run
	// more than once; a retried transaction reuses it.
	key, wrapped, err := e.hsm.NewDataKey(KEKLabel, KeySize)
	if err != nil {
		return fmt.Errorf("escrow: new data key for %s: %w", id, err)
	}
	clear(key) // only the escrowed copy is kept; delivery unwraps it again
	now := e.now()
	var changes []lifecycle.Change
	_, err = e.st.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
		if d.Revoked {
			return nil, store.ErrNoChange
		}
		before := map[uint32]store.DataKeyStatus{}
		for _, k := range d.DataKeys {
			before[k.Version] = k.Status
		}
		events := Advance(d, wrapped, KEKLabel, e.policy, now, actor)
		changes = changes[:0]
		for _, k := range d.DataKeys {
			if from, ok := before[k.Version]; !ok || from != k.Status {
				if c, ok := dataKeyChange(id, k.Version, from, k.Status, actor); ok {
					changes = append(changes, c)
				}
			}
		}
		return events, nil
	})
	if err != nil {
		return fmt.Errorf("escrow: rotate %s: %w", id, err)
	}
	if fn := e.getHooks().OnChange; fn != nil {
		for _, c := range changes {
			fn(c)
		}
	}
	return nil
}

// dataKeyStates maps a data key's status to the life-cycle word it is
// reported with. A destroyed version has none: it was retired before, and
// destroying it only wipes the escrowed copy.
var dataKeyStates = map[store.DataKeyStatus]lifecycle.State{
	store.DataKeyPrimary:     lifecycle.StateActive,
	store.DataKeyDecryptOnly: lifecycle.StateSuperseded,
	store.DataKeyRetired:     lifecycle.StateRetired,
}

func dataKeyChange(device string, version uint32, from, to store.DataKeyStatus, actor string) (lifecycle.Change, bool) {
	t, ok := dataKeyStates[to]
	if !ok {
		return lifecycle.Change{}, false
	}
	return lifecycle.Change{Device: device, Slot: lifecycle.SlotData, Version: version,
		From: dataKeyStates[from], To: t, Actor: actor}, true
}

// Advance adds a new primary version with the given wrapped key to d and
// moves the others along: primary -> decrypt-only -> retired (beyond
// pol.DataKeysDecrypt) -> destroyed (pol.DataKeyDestroyAfter after
// retirement). It returns the audit events. Pure, for table tests.
func Advance(d *store.Device, wrapped []byte, kek string, pol policy.Policy, now time.Time, actor string) []store.Event {
	next := uint32(1)
	if n := len(d.DataKeys); n > 0 {
		next = d.DataKeys[n-1].Version + 1
	}
	ev := func(action string, v uint32) store.Event {
		return store.Event{Action: action, Device: d.ID, Slot: uint8(protocol.SlotData), Version: v, Actor: actor}
	}
	var events []store.Event
	for _, k := range d.DataKeys {
		if k.Status == store.DataKeyPrimary {
			k.Status = store.DataKeyDecryptOnly
		}
	}
	d.DataKeys = append(d.DataKeys, &store.DataKey{Version: next, Status: store.DataKeyPrimary, Wrapped: wrapped, KEK: kek, CreatedAt: now})
	events = append(events, ev("data-key-created", next))
	live := 0
	for i := len(d.DataKeys) - 1; i >= 0; i-- {
		k := d.DataKeys[i]
		switch k.Status {
		case store.DataKeyPrimary:
		case store.DataKeyDecryptOnly:
			live++
			if live > pol.DataKeysDecrypt {
				k.Status, k.RetiredAt = store.DataKeyRetired, now
				events = append(events, ev("data-key-retired", k.Version))
			}
		case store.DataKeyRetired:
			if now.Sub(k.RetiredAt) >= pol.DataKeyDestroyAfter.D() {
				k.Status, k.Wrapped = store.DataKeyDestroyed, nil
				events = append(events, ev("data-key-destroyed", k.Version))
			}
		}
	}
	return events
}

// Recovery is a data key released to an operator, sealed to the
// operator's certificate key.
type Recovery struct {
	Status   store.DataKeyStatus
	Sealed   []byte // COSE_Encrypt0 (HPKE) of the raw key
	Audience string // the binding to open it with
}

// Recover releases version of device's data key to the operator whose
// certificate is op, sealed to that certificate's key: the key never
// crosses the wire or reaches a log in plaintext. The release is audited
// before anything is returned; a destroyed or unknown version is refused.
// It works for a revoked device too: reading back what a lost device wrote
// is what escrow is for.
func (e *Escrow) Recover(ctx context.Context, device string, version uint32, op *x509.Certificate, actor string) (Recovery, error) {
	pub, ok := op.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return Recovery{}, ErrOperatorKey
	}
	d, err := e.st.GetDevice(ctx, device)
	if err != nil {
		return Recovery{}, fmt.Errorf("escrow: %s: %w", device, err)
	}
	k := d.DataKey(version)
	if k == nil || k.Status == store.DataKeyDestroyed {
		return Recovery{}, fmt.Errorf("%w: %s v%d", ErrNoKey, device, version)
	}
	raw, err := e.UnwrapDataKey(ctx, k)
	if err != nil {
		return Recovery{}, fmt.Errorf("escrow: %s v%d: %w", device, version, err)
	}
	aud := adminapi.RecoveryAudience(device, version)
	sealed, err := protocol.SealEncrypt0(pub, raw, aud)
	clear(raw)
	if err != nil {
		return Recovery{}, fmt.Errorf("escrow: seal %s v%d: %w", device, version, err)
	}
	if err := e.st.Audit(ctx, store.Event{Action: "escrow-recovered", Device: device, Slot: uint8(protocol.SlotData),
		Version: version, Actor: actor, Detail: "released to " + op.Subject.CommonName + ", serial " + op.SerialNumber.Text(16)}); err != nil {
		return Recovery{}, fmt.Errorf("escrow: audit: %w", err) // no audit, no release
	}
	return Recovery{Status: k.Status, Sealed: sealed, Audience: aud}, nil
}
