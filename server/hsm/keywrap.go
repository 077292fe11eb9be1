package hsm

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
)

// aivMagic is the constant high half of RFC 5649's Alternative Initial
// Value; the low half is the plaintext length (the MLI).
var aivMagic = [4]byte{0xa6, 0x59, 0x59, 0xa6}

// WrapPad wraps key under kek with AES Key Wrap with Padding (RFC 5649), the
// algorithm PKCS#11 calls CKM_AES_KEY_WRAP_PAD. It is the software twin of
// Token's escrow wrapping: SoftKeys uses it, and tests use it to check the
// token's output byte for byte (the algorithm is deterministic).
//
// kek must be an AES key (16, 24 or 32 bytes); key may be any non-empty
// length up to 2^32-1 bytes. The result is 8 bytes longer than key rounded
// up to a multiple of 8, and at least 16 bytes. Errors never contain key
// material.
func WrapPad(kek, key []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("hsm: key wrap: KEK: %w", err)
	}
	if len(key) == 0 || uint64(len(key)) > math.MaxUint32 {
		return nil, fmt.Errorf("hsm: key wrap: key length %d out of range", len(key))
	}
	padded := (len(key) + 7) / 8 * 8
	out := make([]byte, 8+padded)
	copy(out[:4], aivMagic[:])
	binary.BigEndian.PutUint32(out[4:8], uint32(len(key)))
	copy(out[8:], key) // the padding stays zero
	if padded == 8 {
		// A single block: one AES encryption of AIV || P (RFC 5649 §4.1).
		b.Encrypt(out, out)
		return out, nil
	}
	wrapBlocks(b, out)
	return out, nil
}

// UnwrapPad reverses WrapPad. A blob that was not made by WrapPad (or
// CKM_AES_KEY_WRAP_PAD) under kek, or was altered, fails with an error that
// wraps ErrUnwrap; the integrity check runs in constant time and the error
// does not say which part of it failed.
func UnwrapPad(kek, wrapped []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("hsm: key unwrap: KEK: %w", err)
	}
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, fmt.Errorf("%w: wrapped length %d is not a multiple of 8 of at least 16", ErrUnwrap, len(wrapped))
	}
	buf := make([]byte, len(wrapped))
	if len(wrapped) == 16 {
		b.Decrypt(buf, wrapped)
	} else {
		copy(buf, wrapped)
		unwrapBlocks(b, buf)
	}
	// buf is AIV || padded plaintext. Check, without branching on secret
	// data: the magic, 8*(n-1) < MLI <= 8*n, and zero padding.
	n := len(buf)/8 - 1
	ok := subtle.ConstantTimeCompare(buf[:4], aivMagic[:])
	mli := binary.BigEndian.Uint32(buf[4:8])
	ok &= lessOrEq(uint64(8*(n-1))+1, uint64(mli))
	ok &= lessOrEq(uint64(mli), uint64(8*n))
	// The padding lies in the last block: bytes at plaintext offsets >= MLI.
	var pad byte
	last := 8 * (n - 1)
	for i := last; i < 8*n; i++ {
		beyond := byte(lessOrEq(uint64(mli), uint64(i))) // 1 if i >= mli
		pad |= buf[8+i] & -beyond
	}
	ok &= subtle.ConstantTimeByteEq(pad, 0)
	if ok != 1 {
		clear(buf)
		return nil, fmt.Errorf("%w: integrity check failed", ErrUnwrap)
	}
	key := make([]byte, mli)
	copy(key, buf[8:])
	clear(buf)
	return key, nil
}

// lessOrEq returns 1 if x <= y and 0 otherwise, in constant time, for x and
// y below 2^63.
func lessOrEq(x, y uint64) int {
	return int(((x - y - 1) >> 63) & 1)
}

// wrapBlocks runs the RFC 3394 wrapping process (index form, §2.2.1) in
// place over buf = A || R[1] || ... || R[n], n >= 2.
func wrapBlocks(b cipher.Block, buf []byte) {
	n := len(buf)/8 - 1
	var blk [16]byte
	copy(blk[:8], buf[:8])
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			r := buf[8*i : 8*i+8]
			copy(blk[8:], r)
			b.Encrypt(blk[:], blk[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(blk[:8])^t)
			copy(r, blk[8:])
		}
	}
	copy(buf[:8], blk[:8])
	clear(blk[:])
}

// unwrapBlocks runs the RFC 3394 unwrapping process (index form, §2.2.2) in
// place over buf = C[0] || ... || C[n], n >= 2, leaving A || P[1..n].
func unwrapBlocks(b cipher.Block, buf []byte) {
	n := len(buf)/8 - 1
	var blk [16]byte
	copy(blk[:8], buf[:8])
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			r := buf[8*i : 8*i+8]
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(blk[:8])^t)
			copy(blk[8:], r)
			b.Decrypt(blk[:], blk[:])
			copy(r, blk[8:])
		}
	}
	copy(buf[:8], blk[:8])
	clear(blk[:])
}
