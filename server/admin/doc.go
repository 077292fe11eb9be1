// Package admin is fleetd's operator API handler: JSON over HTTPS with
// mutual TLS, where only certificates of role admin from the fleet CA are
// let in. The wire types and paths are in package adminapi, the Go client
// in adminapi/client.
//
// # Basics
//
// Handler serves the routes adminapi lists. It talks to fleetd's parts
// through one small interface per area (Devices, Provisioner, Rotations,
// Revoker, Anchors, DataKeys, Escrow, Firmware, Status, Audit, Labeler,
// Sessions), each
// declared next to the routes that use it, and turns their domain values
// into wire types. Listen serves it on its own mutual-TLS listener.
//
// # Caveats
//
// Errors are adminapi.ErrorBody with a status code; only this package maps
// errors to status codes and error codes.
package admin
