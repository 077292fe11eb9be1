// Package simulator drives many real device agents (package device, each
// with its own MQTT/TLS connection) against a real fleetd, rotates their
// identities and reports what happened in figures a person can act on.
//
// # Basics
//
// Run starts an in-process fleetd (a temporary directory, a SoftHSM2 token
// of its own, the embedded broker) unless Config.Server names a running one,
// provisions the devices through the admin API exactly as fleetctl does,
// starts one agent per device, then for each round requests a rotation of
// every device and waits until each agent has activated its new version.
//
// Time-to-rotate is measured per device from the moment its agent receives
// rotate to the moment it has reconnected with the new certificate and sent
// activated: the whole rotate -> CSR -> HSM issue -> delivery -> mTLS
// reconnect -> activated path. Bytes are application payload bytes counted
// by the agents, both directions; HSM operations come from fleetd's counter.
//
// # Campaign mode
//
// With Config.Campaign the rotations are fleetd's: Run creates identity
// campaigns through the admin API and follows them stage by stage, with
// devices away during their stage, a canary cohort made to fail (its
// agents ignore fleetd's downlinks, through device.Options.Link, which
// fleet-agent's flags cannot reach), the rollback and its check, fleetd
// SIGKILLed mid-campaign, and revocations; M5 and M10 come from fleetd's
// /metrics. CampaignMode says what each campaign must do; the report lists
// what it did not under Problems.
//
// # Caveats
//
// Every agent holds one socket and, with an in-process fleetd, the broker
// holds the other end in the same process: plan two descriptors per device
// against the process's open-file limit (Run raises the soft limit to the
// hard one and refuses a run that cannot fit).
package simulator
