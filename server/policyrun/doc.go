// Package policyrun keeps fleetd's running policy: the newest applied
// version from the store, in a policy.Holder that the engine, the broker,
// the escrow and the scheduler read at each decision, so that an apply
// changes behaviour without a restart. It checks a file against fleetd's
// own selector parser, computes the diff against the running policy with
// the devices each change affects, and applies a file as the next
// version, audited.
//
// # Caveats
//
// cert_validity is read by the CA when fleetd starts: an applied change
// takes effect at the next start (the diff says so). A store without
// store.PolicyStore keeps no versions: fleetd runs the policy it was
// started with and refuses applies.
package policyrun
