package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// PolicyVersion is one applied policy file, kept so that fleetd starts
// with the newest and an operator can tell what ran when.
type PolicyVersion struct {
	// Version is given by AppendPolicy: 1, 2, ...
	Version   uint64
	Text      []byte // the file as applied
	SHA256    string // hex, of Text
	Actor     string
	AppliedAt time.Time
}

// PolicyStore is the optional capability of keeping applied policies.
// Callers type-assert it; with a store without it fleetd runs the policy
// it was started with and refuses applies.
type PolicyStore interface {
	// AppendPolicy stores p as the version after the newest, giving
	// p.Version, with its audit events atomically (events without a Detail
	// get "policy vN sha256 HASH": the version is known only here).
	AppendPolicy(ctx context.Context, p *PolicyVersion, events ...Event) error
	// LatestPolicy returns the newest version, or ErrNotExist when none
	// was applied.
	LatestPolicy(ctx context.Context) (*PolicyVersion, error)
	// ForEachPolicy calls fn for every version, oldest first.
	ForEachPolicy(ctx context.Context, fn func(p *PolicyVersion) error) error
}

var bucketPolicies = []byte("policies")

var _ PolicyStore = (*Bolt)(nil)

// AppendPolicy implements PolicyStore.
func (s *Bolt) AppendPolicy(ctx context.Context, p *PolicyVersion, events ...Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPolicies)
		if err != nil {
			return err
		}
		n, err := b.NextSequence()
		if err != nil {
			return err
		}
		q := *p
		q.Version = n
		v, err := s.enc.Marshal(&q)
		if err != nil {
			return fmt.Errorf("encode policy: %w", err)
		}
		if err := b.Put(binary.BigEndian.AppendUint64(nil, n), v); err != nil {
			return err
		}
		evs := append([]Event(nil), events...)
		for i := range evs {
			if evs[i].Detail == "" {
				evs[i].Detail = fmt.Sprintf("policy v%d sha256 %s", n, p.SHA256)
			}
		}
		if err := s.appendAudit(tx, evs); err != nil {
			return err
		}
		p.Version = n
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: append policy: %w", err)
	}
	return nil
}

// LatestPolicy implements PolicyStore.
func (s *Bolt) LatestPolicy(ctx context.Context) (*PolicyVersion, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *PolicyVersion
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPolicies)
		if b == nil {
			return nil
		}
		_, v := b.Cursor().Last()
		if v == nil {
			return nil
		}
		out = new(PolicyVersion)
		return s.dec.Unmarshal(v, out)
	})
	if err != nil {
		return nil, fmt.Errorf("store: latest policy: %w", err)
	}
	if out == nil {
		return nil, fmt.Errorf("policy: %w", ErrNotExist)
	}
	return out, nil
}

// ForEachPolicy implements PolicyStore.
func (s *Bolt) ForEachPolicy(ctx context.Context, fn func(p *PolicyVersion) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPolicies)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var p PolicyVersion
			if err := s.dec.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("store: decode policy: %w", err)
			}
			return fn(&p)
		})
	})
}
