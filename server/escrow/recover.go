package escrow

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

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
