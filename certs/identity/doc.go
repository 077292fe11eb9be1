// Package identity reads and checks keyfleet certificates: whom a
// certificate names, whether it chains to the fleet's roots, and its PEM
// form. It is what every holder of a keyfleet certificate needs (the device
// agent, the broker's auth hook, the admin API, fleetctl), kept apart from
// the issuing CA in package certs so that a device links none of the
// issuer's dependencies: this package imports only the standard library.
//
// # Basics
//
// Every keyfleet certificate names whom it belongs to twice: the subject
// common name and one URI SAN urn:keyfleet:{role}:{name}, where role is
// device, idevid, server or admin. Of reads that back and is what the broker
// and the admin API trust; a client id or a header never is. Verify checks a
// leaf's chain for client authentication and returns the identity it names.
//
// # Caveats
//
// Of ignores URI SANs that are not keyfleet's, but refuses a certificate
// with two keyfleet identities, even two equal ones, and one whose common
// name differs from the name in its URI.
package identity
