// Package certs issues keyfleet's X.509 certificates behind one Issuer
// interface, so fleetd can sign with its embedded CA (key in the HSM) or
// hand requests to a step-ca without the rotation engine knowing which.
//
// # Basics
//
// Every certificate names whom it belongs to twice: the subject common name
// and a URI SAN urn:keyfleet:{role}:{name}; package certs/identity defines
// those names and reads them back. CheckCSR applies the enrolment policy:
// the CSR's own signature, a P-256 key, and names that are exactly the
// requesting device's. NewRoot and CrossSign make the fleet's roots and the
// cross certificates that carry devices from one root to the next.
//
// # Caveats
//
// The CA takes a crypto.Signer and never a PKCS#11 handle: custody is
// server/hsm's job. Validity is clamped to the CA's own NotAfter. This
// package links go.step.sm/crypto; code that runs on a device imports
// certs/identity only.
package certs
