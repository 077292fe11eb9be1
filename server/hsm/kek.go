package hsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// KEKSize is the length in bytes of a key-encryption key: AES-256, because
// escrowed data keys may have to stay confidential for the life of a device.
const KEKSize = 32

func checkLabel(label string) error {
	if label == "" {
		return errors.New("hsm: empty key label")
	}
	return nil
}

// secretKeyURI is the RFC 7512 URI of a secret key such as a KEK.
func secretKeyURI(token, object string) string {
	return strings.TrimSuffix(KeyURI(token, object), ";type=private") + ";type=secret-key"
}

// kekTemplate selects AES token keys named label.
func kekTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// findKEK returns the handle of the one KEK named label.
func (t *Token) findKEK(rs *rawSession, label string) (pkcs11.ObjectHandle, error) {
	objs, err := rs.find(kekTemplate(label), 2)
	if err != nil {
		return 0, fmt.Errorf("hsm: find %s: %w", secretKeyURI(t.label, label), err)
	}
	if len(objs) != 1 {
		return 0, fmt.Errorf("%w: %s (%d matches)", ErrKeyNotFound, secretKeyURI(t.label, label), len(objs))
	}
	return objs[0], nil
}

// GenerateKEK creates the AES-256 key-encryption key named label inside the
// token, under which NewDataKey escrows data keys. The KEK is a token object
// that is sensitive and never extractable, and can only wrap and unwrap
// (not encrypt or decrypt, which would let anyone holding the PIN decrypt a
// wrapped blob with raw AES and bypass the key-wrap integrity check); it is
// not modifiable, so those attributes cannot be changed later. CKA_LABEL and
// CKA_ID are both label, as for GenerateP256.
//
// It fails with ErrKeyExists if a secret key already carries the label or
// ID: generating twice would make the escrow KEK ambiguous, and silently
// replacing it would orphan every blob made under the old one. The check
// and the generation are atomic within this process only.
func (t *Token) GenerateKEK(label string) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	uri := secretKeyURI(t.label, label)
	t.genMu.Lock()
	defer t.genMu.Unlock()
	return t.raw.do(func(rs *rawSession) error {
		for _, attr := range []uint{pkcs11.CKA_LABEL, pkcs11.CKA_ID} {
			objs, err := rs.find([]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(attr, label),
			}, 1)
			if err != nil {
				return fmt.Errorf("hsm: look up %s: %w", uri, err)
			}
			if len(objs) > 0 {
				return fmt.Errorf("%w: %s", ErrKeyExists, uri)
			}
		}
		_, err := rs.GenerateKey(rs.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, KEKSize),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		})
		if err != nil {
			return fmt.Errorf("hsm: generate %s: %w", uri, err)
		}
		return nil
	})
}

// HasKEK reports whether an AES key named label is in the token, so that
// fleetd init can create the escrow KEK once and later starts can check for
// it without treating ErrKeyExists as success.
func (t *Token) HasKEK(label string) (bool, error) {
	if err := checkLabel(label); err != nil {
		return false, err
	}
	var found bool
	err := t.raw.do(func(rs *rawSession) error {
		objs, err := rs.find(kekTemplate(label), 1)
		if err != nil {
			return fmt.Errorf("hsm: find %s: %w", secretKeyURI(t.label, label), err)
		}
		found = len(objs) > 0
		return nil
	})
	return found, err
}
