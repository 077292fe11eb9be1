// Package certs issues and checks keyfleet's X.509 certificates behind one
// Issuer interface, so fleetd can sign with its embedded CA (key in the HSM)
// or hand requests to a step-ca without the rotation engine knowing which.
//
// # Basics
//
// Every certificate names whom it belongs to twice: the subject common name
// and a URI SAN urn:keyfleet:{role}:{name}, where role is device, server or
// admin. IdentityOf reads that back and is what the broker and the admin API
// trust; a client id or a header never is. CheckCSR applies the enrolment
// policy: the CSR's own signature, a P-256 key, and names that are exactly the
// requesting device's.
//
// # Caveats
//
// The CA takes a crypto.Signer and never a PKCS#11 handle: custody is
// server/hsm's job. Validity is clamped to the CA's own NotAfter.
package certs
