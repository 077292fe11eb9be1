package store

import (
	"context"
	"errors"
	"time"
)

// Errors of the store.
var (
	// ErrNotExist: no record under that key.
	ErrNotExist = errors.New("store: does not exist")
	// ErrExists: CreateDevice found a device with that id.
	ErrExists = errors.New("store: already exists")
	// ErrNoChange may be returned by an UpdateDevice function to say the
	// record is already as wanted; nothing is written and UpdateDevice
	// returns nil.
	ErrNoChange = errors.New("store: no change")
	// ErrAuditBroken: the audit chain does not verify.
	ErrAuditBroken = errors.New("store: audit chain broken")
)

// Store is fleetd's durable state. Implementations are safe for concurrent
// use, honour ctx cancellation before they start writing, and make every
// successful write durable before returning.
type Store interface {
	// CreateDevice stores a new device and its audit events; ErrExists if
	// the id is taken.
	CreateDevice(ctx context.Context, d *Device, events ...Event) error
	// UpdateDevice loads the device, applies fn and stores the result with
	// the events fn returns, atomically. fn may run more than once and must
	// only modify d. If fn returns ErrNoChange nothing is written and nil is
	// returned; any other error is returned unchanged and nothing is written.
	UpdateDevice(ctx context.Context, id string, fn func(d *Device) ([]Event, error)) (*Device, error)
	// GetDevice returns a copy of the device, or ErrNotExist.
	GetDevice(ctx context.Context, id string) (*Device, error)
	// ForEachDevice calls fn for every device in id order, with copies.
	ForEachDevice(ctx context.Context, fn func(d *Device) error) error
	// Audit appends events that belong to no device change.
	Audit(ctx context.Context, events ...Event) error
	// ForEachAudit calls fn for the audit records from seq on, in order.
	ForEachAudit(ctx context.Context, from uint64, fn func(r *AuditRecord) error) error
	// VerifyAudit checks the whole chain and returns how many records it holds.
	VerifyAudit(ctx context.Context) (uint64, error)
	Close() error
}

// BatchCreator is the optional capability of creating many devices in one
// durable transaction, which registering a large fleet needs (one fsync per
// device would take an hour for a million). Callers type-assert it and fall
// back to CreateDevice.
type BatchCreator interface {
	// CreateDevices stores the devices atomically, with events[i] for each
	// device i it creates, skipping the ids that exist; the returned slice
	// has one entry per device: nil or an error wrapping ErrExists.
	CreateDevices(ctx context.Context, devs []*Device, events []Event) ([]error, error)
}

// GraceIndex is the optional capability of listing the superseded versions
// whose grace window is running, without reading every device: what fleetd
// needs at start to resume its grace timers, fast with a million devices.
type GraceIndex interface {
	// ForEachGrace calls fn for every superseded version, earliest
	// deadline first.
	ForEachGrace(ctx context.Context, fn func(device string, slot uint8, version uint32, until time.Time) error) error
}
