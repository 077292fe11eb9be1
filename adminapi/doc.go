// Package adminapi is the wire contract of fleetd's operator API: the JSON
// request and response bodies, the error body and its codes, and the
// paths. fleetd's handler (server/admin) and the Go client
// (adminapi/client) both use it, so the two cannot drift apart, and it
// imports nothing of keyfleet's: a client links neither the broker nor the
// store.
//
// # Basics
//
//	GET  /v1/status                counts by state, rejections, HSM operations
//	GET  /v1/devices               every device, summarised
//	GET  /v1/devices/{id}          one device with its versions
//	POST /v1/devices               provision: {id, csr} -> first certificate + trust material
//	POST /v1/devices/batch         provision up to MaxBatch devices in one call and one transaction
//	POST /v1/devices/{id}/revoke   revoke a device at once
//	POST /v1/rotations             {devices: [...]} or {all: true} -> rotations
//	GET  /v1/anchors               the current trust-anchor set
//	POST /v1/anchors/rotate        the next trust-anchor set
//	POST /v1/datakeys/rotate       a new primary data key for every device
//	POST /v1/escrow/recover        an escrowed data key, sealed to the operator
//	POST /v1/firmware              publish a firmware release
//	GET  /v1/audit/verify          verify the audit chain
//	GET  /debug/pprof/...          Go profiles, for operators chasing time or memory
//
// Every non-2xx answer carries an ErrorBody: a message for people and a
// Code for programs.
//
// # Caveats
//
// Fields are only ever added; a client must ignore fields it does not know.
package adminapi
