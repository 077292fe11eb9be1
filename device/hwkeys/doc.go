// Package hwkeys keeps a fleet-agent's private keys in a PKCS#11 token: a
// TPM 2.0 through tpm2-pkcs11, or a board's secure element through its
// vendor's module. Field devices keep keys there rather than in PEM files
// so that a copied disk image or a read of the agent's directory yields no
// key: every key is generated inside the token (CKA_SENSITIVE,
// not CKA_EXTRACTABLE, CKA_TOKEN) and signs there, for the CSR, the TLS
// handshake and COSE messages alike.
//
// The PKCS#11 binding (github.com/miekg/pkcs11, through crypto11) needs
// cgo, so the store exists only in builds with cgo; a CGO_ENABLED=0 build
// (the default cross-compiled ARM agent) refuses --key-store pkcs11: with a
// message saying how to build it. No maintained cgo-free PKCS#11 binding
// exists for Go: PKCS#11 is a C ABI loaded with dlopen.
package hwkeys

// Scheme is the prefix of a key-store URI naming a PKCS#11 token.
const Scheme = "pkcs11:"
