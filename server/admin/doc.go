// Package admin is fleetd's operator API: JSON over HTTPS with mutual TLS,
// where only certificates of role admin from the fleet CA are let in. It
// holds both the HTTP handler and the Go client that fleetctl and the
// simulator use, so the two cannot drift apart.
//
// # Basics
//
//	GET  /v1/status            counts by state, rejections, HSM operations
//	GET  /v1/devices           every device, summarised
//	GET  /v1/devices/{id}      one device with its versions
//	POST /v1/devices           provision: {id, csr} -> first certificate + trust material
//	POST /v1/devices/batch     provision up to 1,000 devices in one call and one transaction
//	POST /v1/rotations         {devices: [...]} or {all: true} -> rotations
//	GET  /v1/audit/verify      verify the audit chain
//	GET  /debug/pprof/...      Go profiles, for operators chasing time or memory
//
// Errors are JSON {"error": "..."} with a status code; only this package
// maps errors to status codes.
package admin
