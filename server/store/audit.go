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
