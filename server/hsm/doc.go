// Package hsm holds fleetd's key custody: the CA, update-signing,
// firmware-signing and birth-CA keys and the escrow KEK live in a PKCS#11
// token. Signing keys are used only through crypto.Signer values; the KEK
// only through GenerateKEK, NewDataKey and UnwrapDataKey; so nothing above
// this package ever sees a PKCS#11 handle or a long-lived key's bytes.
//
// # Basics
//
// Open a token with Open(Config); create keys once with GenerateP256 and
// look them up afterwards with Signer. Keys are named by their CKA_LABEL and
// presented to operators as RFC 7512 pkcs11: URIs. Keys are created with
// only the attributes they need: a signing key's private half signs and
// nothing else (no decrypt, unwrap or derive), is CKA_SENSITIVE, not
// CKA_EXTRACTABLE (the token never lets it out) and not CKA_MODIFIABLE (no
// one can switch more on later); the KEK wraps and unwraps only.
//
// The files follow the concerns: hsm.go opens the token and holds the
// signing keys, attributes.go their templates and the attribute read-back,
// session.go the raw PKCS#11 session pool the AES work needs, kek.go the
// escrow KEK, datakey.go the data keys wrapped under it, softkeys.go the
// software stand-in, keywrap.go RFC 5649 in software.
// Every signature made through a Signer from this package is counted, which
// is how fleetd reports HSM operations per rotation.
//
// SoftKeys is the loudly named alternative for machines without a token:
// software keys in a PEM file, used only behind fleetd's --insecure-soft-keys.
//
// # Caveats
//
// PKCS#11 libraries are process-global: crypto11 shares one initialised
// module between the Tokens of a process, and SoftHSM2 reads SOFTHSM2_CONF
// once, when the module is first loaded. InitToken uses the raw module and
// must not race with another goroutine's first Open.
package hsm
