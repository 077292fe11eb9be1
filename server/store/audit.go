package store

import (
	"crypto/sha256"
	"time"
)

// Event is an audited state change, as the caller describes it. The store
// numbers it, timestamps it and chains it.
type Event struct {
	Action  string
	Device  string
	Slot    uint8
	Version uint32
	RID     []byte
	Actor   string
	Detail  string
}

// AuditRecord is an Event as stored: numbered and hash-chained. Hash is
// SHA-256 over Prev and the record's deterministic CBOR encoding with Hash
// empty, so changing, dropping or reordering any record breaks every later
// hash.
type AuditRecord struct {
	Seq  uint64
	Time time.Time
	Event
	Prev []byte
	Hash []byte
	// Chain is the hash chain the record is on: always 0 in a store with
	// one chain (bbolt). A store shared by several fleetd processes
	// (PostgreSQL) keeps several, chosen by the event's device, so that no
	// single head row serialises every write; Prev is then the hash of the
	// previous record of the same chain. Zero is not encoded, so records
	// written before chains existed hash as they always did.
	Chain uint32 `cbor:",omitempty"`
}

// ComputeHash returns the record's hash as defined on AuditRecord, with
// enc the store's deterministic CBOR encoder: for backends outside this
// package, which must hash exactly as Bolt does.
func (r *AuditRecord) ComputeHash(enc func(any) ([]byte, error)) ([]byte, error) {
	return r.computeHash(enc)
}

func (r *AuditRecord) computeHash(enc func(any) ([]byte, error)) ([]byte, error) {
	c := *r
	c.Hash = nil
	b, err := enc(&c)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(r.Prev)
	h.Write(b)
	return h.Sum(nil), nil
}
