// Package provisioning registers devices as a factory station asks: it
// issues the birth credential (IDevID, fleetd playing the manufacturer CA)
// when one is asked for, has the rotation engine issue and record the
// first identity, and gives the trust material a device installs with
// them.
//
// # Basics
//
// Provision registers one device, ProvisionBatch many in one store
// transaction; Bundle is the trust material (current root, update key,
// signed anchor set, broker address) that goes with every registration.
//
// # Caveats
//
// In a real supply chain the birth CA lives at the factory; fleetd holds
// it (server/trust, key in the token) so that fleetctl device add and the
// simulator can play both parts.
package provisioning
