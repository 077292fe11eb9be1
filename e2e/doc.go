// Package e2e holds keyfleet's end-to-end tests: a real fleetd (SoftHSM2
// token, embedded mochi-mqtt broker over TLS on loopback, bbolt store) and
// real device agents, in-process and as separate processes. It has no
// non-test code beyond this comment.
package e2e
