package datakey

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
)

// Ciphertext layout, as Tink's output prefix: a format byte and the key
// version, then the random nonce and the AES-GCM output.
const (
	// formatV1 starts every ciphertext of this format. A later format gets
	// another byte, so old ciphertexts stay readable.
	formatV1 = 0x01
	// prefixSize is the format byte and the 4-byte big-endian version.
	prefixSize = 5
	// nonceSize and tagSize are those of AES-GCM with random nonces.
	nonceSize = 12
	tagSize   = 16

	// Overhead is how many bytes Encrypt adds to a plaintext: the prefix
	// (5), the nonce (12) and the GCM tag (16). Callers sizing storage or
	// packets need it.
	Overhead = prefixSize + nonceSize + tagSize
)

// Encrypt encrypts plaintext with key (16 or 32 bytes) as version v,
// binding aad (which may be nil) and the version prefix. It is what
// Keyset.Encrypt does with its primary, offered standalone for a server
// or operator that holds a single key, not a keyset.
func Encrypt(key []byte, v uint32, plaintext, aad []byte) ([]byte, error) {
	aead, err := newAEAD(key, v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, prefixSize, prefixSize+nonceSize+len(plaintext)+tagSize)
	out[0] = formatV1
	binary.BigEndian.PutUint32(out[1:prefixSize], v)
	return aead.Seal(out, nil, plaintext, gcmAAD(out[:prefixSize], aad)), nil
}

// Decrypt decrypts a ciphertext made by Encrypt or Keyset.Encrypt with
// key, which must be version v: ErrVersionMismatch if the ciphertext names
// another. This is the operator's path for data whose version the device
// no longer holds: recover that version's key from escrow (VersionOf says
// which) and decrypt here. Unlike Keyset.Decrypt it does not know about
// statuses; whoever holds the key decides.
func Decrypt(key []byte, v uint32, ciphertext, aad []byte) ([]byte, error) {
	got, err := VersionOf(ciphertext)
	if err != nil {
		return nil, err
	}
	if got != v {
		return nil, fmt.Errorf("%w: ciphertext is version %d, key is version %d", ErrVersionMismatch, got, v)
	}
	return decrypt(key, v, ciphertext, aad)
}

// VersionOf returns the key version that made a ciphertext, without
// decrypting it: which key to load, or to recover from escrow. The answer
// is not authenticated until a Decrypt succeeds.
func VersionOf(ciphertext []byte) (uint32, error) {
	if len(ciphertext) < Overhead {
		return 0, fmt.Errorf("%w: %d bytes, want at least %d", ErrMalformed, len(ciphertext), Overhead)
	}
	if ciphertext[0] != formatV1 {
		return 0, fmt.Errorf("%w: format byte %#02x, want %#02x", ErrMalformed, ciphertext[0], formatV1)
	}
	return binary.BigEndian.Uint32(ciphertext[1:prefixSize]), nil
}

// decrypt opens a ciphertext whose prefix VersionOf has checked.
func decrypt(key []byte, v uint32, ciphertext, aad []byte) ([]byte, error) {
	aead, err := newAEAD(key, v)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, nil, ciphertext[prefixSize:], gcmAAD(ciphertext[:prefixSize], aad))
	if err != nil {
		return nil, fmt.Errorf("%w: version %d: %v", ErrDecrypt, v, err)
	}
	return pt, nil
}

// newAEAD returns AES-GCM under key with random nonces, which it prepends
// to its output (12 bytes). Random nonces keep a device stateless at the
// price of the 2^32-messages-per-key limit in the package doc.
func newAEAD(key []byte, v uint32) (cipher.AEAD, error) {
	if err := checkKey(v, key); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("datakey: aes: %w", err) // unreachable: checkKey passed
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("datakey: gcm: %w", err)
	}
	return aead, nil
}

// gcmAAD is the additional data GCM authenticates: the 5-byte prefix,
// then the caller's aad. The prefix has a fixed length, so the
// concatenation is unambiguous; binding it means a ciphertext cannot be
// relabelled as another version even if two versions shared a key.
func gcmAAD(prefix, aad []byte) []byte {
	return append(append(make([]byte, 0, len(prefix)+len(aad)), prefix...), aad...)
}

// Encrypt encrypts plaintext with the primary key, binding aad (which may
// be nil: pass what identifies the data, e.g. a file name, so that
// ciphertexts cannot be swapped). The result starts with the primary's
// version. ErrNoPrimary on an empty keyset.
func (ks *Keyset) Encrypt(plaintext, aad []byte) ([]byte, error) {
	p := ks.primary()
	if p < 0 {
		return nil, ErrNoPrimary
	}
	e := ks.versions[p]
	return Encrypt(e.key.bytes(), e.version, plaintext, aad)
}

// Decrypt decrypts a ciphertext made by Encrypt with any version the
// keyset still holds, picked from the ciphertext's prefix: the Primary or
// a DecryptOnly one. It refuses a Retired version (ErrRetired), a
// Destroyed one (ErrDestroyed) and one it never had (ErrUnknownVersion),
// so that the caller can tell "recover it from escrow" from "lost" from
// "not ours".
func (ks *Keyset) Decrypt(ciphertext, aad []byte) ([]byte, error) {
	v, err := VersionOf(ciphertext)
	if err != nil {
		return nil, err
	}
	i := ks.find(v)
	if i < 0 {
		return nil, fmt.Errorf("%w: version %d", ErrUnknownVersion, v)
	}
	switch e := ks.versions[i]; e.status {
	case Primary, DecryptOnly:
		return decrypt(e.key.bytes(), v, ciphertext, aad)
	case Retired:
		return nil, fmt.Errorf("%w: version %d", ErrRetired, v)
	case Destroyed:
		return nil, fmt.Errorf("%w: version %d", ErrDestroyed, v)
	default:
		return nil, fmt.Errorf("datakey: decrypt: version %d has status %v", v, e.status) // unreachable: Add and UnmarshalBinary validate
	}
}
