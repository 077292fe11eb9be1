package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	bolt "go.etcd.io/bbolt"
)

// Bucket and key names, in one place.
var (
	bucketDevices = []byte("devices")
	bucketAudit   = []byte("audit")
	bucketMeta    = []byte("meta")
	// bucketGrace indexes superseded versions by the end of their grace:
	// key = deadline (Unix ns, big-endian) | device | 0 | slot | version.
	bucketGrace  = []byte("grace")
	keyAuditHead = []byte("audit-head")
)

// BoltOptions configures a Bolt store. Zero values take the defaults.
type BoltOptions struct {
	// Timeout to obtain the file lock; 0 means 5 s (bbolt's 0 would wait
	// forever for a second fleetd on the same file).
	Timeout time.Duration
	// MaxBatchDelay is how long a group commit waits for more writers;
	// 0 means 2 ms: long enough to gather a busy fleet's updates into one
	// fsync, short enough not to dominate a rotation's latency.
	MaxBatchDelay time.Duration
	// Now is the clock for audit timestamps; nil means time.Now.
	Now func() time.Time
}

// Bolt is the bbolt Store.
type Bolt struct {
	db  *bolt.DB
	enc cbor.EncMode
	dec cbor.DecMode
	now func() time.Time
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the store file at path.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.MaxBatchDelay == 0 {
		opts.MaxBatchDelay = 2 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	dec0, err := cbor.DecOptions{MaxArrayElements: 1 << 20, MaxMapPairs: 1 << 20}.DecMode()
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db.MaxBatchDelay = opts.MaxBatchDelay
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketAudit, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketGrace) != nil {
			return nil
		}
		// A store from before the index: build it once.
		gb, err := tx.CreateBucket(bucketGrace)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var d Device
			if err := dec0.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("decode device %q: %w", k, err)
			}
			for _, gk := range graceKeys(&d) {
				if err := gb.Put([]byte(gk), nil); err != nil {
					return err
				}
			}
			return nil
		})
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", path, err)
	}
	encOpts := cbor.CoreDetEncOptions()
	encOpts.Time = cbor.TimeRFC3339Nano // keep sub-second grace deadlines
	enc, err := encOpts.EncMode()
	if err != nil {
		db.Close()
		return nil, err
	}
	dec, err := cbor.DecOptions{MaxArrayElements: 1 << 20, MaxMapPairs: 1 << 20}.DecMode()
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Bolt{db: db, enc: enc, dec: dec, now: opts.Now}, nil
}

// Close closes the file.
func (s *Bolt) Close() error { return s.db.Close() }

func (s *Bolt) getDevice(tx *bolt.Tx, id string) (*Device, error) {
	v := tx.Bucket(bucketDevices).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("device %q: %w", id, ErrNotExist)
	}
	var d Device
	if err := s.dec.Unmarshal(v, &d); err != nil {
		return nil, fmt.Errorf("store: decode device %q: %w", id, err)
	}
	return &d, nil
}

// putDevice stores d and keeps the grace index in step with it; old are
// the index keys of the record it replaces.
func (s *Bolt) putDevice(tx *bolt.Tx, d *Device, old []string) error {
	b, err := s.enc.Marshal(d)
	if err != nil {
		return fmt.Errorf("store: encode device %q: %w", d.ID, err)
	}
	if err := tx.Bucket(bucketDevices).Put([]byte(d.ID), b); err != nil {
		return err
	}
	gb := tx.Bucket(bucketGrace)
	now := graceKeys(d)
	keep := map[string]bool{}
	for _, k := range now {
		keep[k] = true
	}
	for _, k := range old {
		if !keep[k] {
			if err := gb.Delete([]byte(k)); err != nil {
				return err
			}
		}
	}
	for _, k := range now {
		if err := gb.Put([]byte(k), nil); err != nil {
			return err
		}
	}
	return nil
}

// graceKeys are the grace-index keys of d's superseded versions.
func graceKeys(d *Device) []string {
	var out []string
	for slot, st := range d.Slots {
		for _, k := range st.Versions {
			if k.State != lifecycle.StateSuperseded {
				continue
			}
			b := make([]byte, 0, 8+len(d.ID)+6)
			b = binary.BigEndian.AppendUint64(b, uint64(k.GraceUntil.UnixNano()))
			b = append(b, d.ID...)
			b = append(b, 0, byte(slot))
			b = binary.BigEndian.AppendUint32(b, k.Version)
			out = append(out, string(b))
		}
	}
	return out
}

var _ GraceIndex = (*Bolt)(nil)

// ForEachGrace implements GraceIndex.
func (s *Bolt) ForEachGrace(ctx context.Context, fn func(device string, slot uint8, version uint32, until time.Time) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGrace).ForEach(func(k, _ []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			if len(k) < 8+1+1+4 {
				return fmt.Errorf("store: bad grace index key %x", k)
			}
			until := time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
			rest := k[8:]
			dev := string(rest[:len(rest)-6])
			slot := rest[len(rest)-5]
			version := binary.BigEndian.Uint32(rest[len(rest)-4:])
			return fn(dev, slot, version, until)
		})
	})
}

// CreateDevice implements Store.
func (s *Bolt) CreateDevice(ctx context.Context, d *Device, events ...Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var exists bool
	err := s.db.Batch(func(tx *bolt.Tx) error {
		exists = false
		if tx.Bucket(bucketDevices).Get([]byte(d.ID)) != nil {
			exists = true
			return nil
		}
		if err := s.putDevice(tx, d, nil); err != nil {
			return err
		}
		return s.appendAudit(tx, events)
	})
	if err != nil {
		return fmt.Errorf("store: create device %q: %w", d.ID, err)
	}
	if exists {
		return fmt.Errorf("device %q: %w", d.ID, ErrExists)
	}
	return nil
}

var _ BatchCreator = (*Bolt)(nil)

// CreateDevices implements BatchCreator: one transaction, one fsync.
func (s *Bolt) CreateDevices(ctx context.Context, devs []*Device, events []Event) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	errs := make([]error, len(devs))
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		var evs []Event
		for i, d := range devs {
			errs[i] = nil
			if b.Get([]byte(d.ID)) != nil {
				errs[i] = fmt.Errorf("device %q: %w", d.ID, ErrExists)
				continue
			}
			if err := s.putDevice(tx, d, nil); err != nil {
				return err
			}
			if i < len(events) {
				evs = append(evs, events[i]) // only the created devices' events
			}
		}
		return s.appendAudit(tx, evs)
	})
	if err != nil {
		return nil, fmt.Errorf("store: create devices: %w", err)
	}
	return errs, nil
}

// UpdateDevice implements Store.
func (s *Bolt) UpdateDevice(ctx context.Context, id string, fn func(d *Device) ([]Event, error)) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Dry run on a snapshot: refusals and no-ops never enter a group
	// commit, where an error would make bbolt re-run the whole group.
	var cur *Device
	if err := s.db.View(func(tx *bolt.Tx) error {
		d, err := s.getDevice(tx, id)
		cur = d
		return err
	}); err != nil {
		return nil, err
	}
	if _, err := fn(cur); errors.Is(err, ErrNoChange) {
		d, gerr := s.GetDevice(ctx, id)
		if gerr != nil {
			return nil, gerr
		}
		return d, nil
	} else if err != nil {
		return nil, err
	}
	var out *Device
	var fnErr error
	err := s.db.Batch(func(tx *bolt.Tx) error {
		fnErr, out = nil, nil
		d, err := s.getDevice(tx, id)
		if err != nil {
			fnErr = err
			return nil
		}
		old := graceKeys(d)
		events, err := fn(d)
		if err != nil {
			// The record changed since the dry run; report, write nothing.
			fnErr = err
			return nil
		}
		for _, st := range d.Slots {
			st.Prune()
		}
		if err := s.putDevice(tx, d, old); err != nil {
			return err
		}
		out = d
		return s.appendAudit(tx, events)
	})
	if err != nil {
		return nil, fmt.Errorf("store: update device %q: %w", id, err)
	}
	if errors.Is(fnErr, ErrNoChange) {
		return s.GetDevice(ctx, id)
	}
	if fnErr != nil {
		return nil, fnErr
	}
	return out, nil
}

// GetDevice implements Store.
func (s *Bolt) GetDevice(ctx context.Context, id string) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var d *Device
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		d, err = s.getDevice(tx, id)
		return err
	})
	return d, err
}

// ForEachDevice implements Store.
func (s *Bolt) ForEachDevice(ctx context.Context, fn func(d *Device) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var d Device
			if err := s.dec.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("store: decode device %q: %w", k, err)
			}
			return fn(&d)
		})
	})
}

// Audit implements Store.
func (s *Bolt) Audit(ctx context.Context, events ...Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.db.Batch(func(tx *bolt.Tx) error { return s.appendAudit(tx, events) }); err != nil {
		return fmt.Errorf("store: audit: %w", err)
	}
	return nil
}

type auditHead struct {
	Seq  uint64
	Hash []byte
}

func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

func (s *Bolt) appendAudit(tx *bolt.Tx, events []Event) error {
	if len(events) == 0 {
		return nil
	}
	meta := tx.Bucket(bucketMeta)
	var head auditHead
	if v := meta.Get(keyAuditHead); v != nil {
		if err := s.dec.Unmarshal(v, &head); err != nil {
			return fmt.Errorf("store: decode audit head: %w", err)
		}
	}
	b := tx.Bucket(bucketAudit)
	now := s.now().UTC()
	for _, ev := range events {
		r := AuditRecord{Seq: head.Seq + 1, Time: now, Event: ev, Prev: head.Hash}
		h, err := r.computeHash(s.enc.Marshal)
		if err != nil {
			return fmt.Errorf("store: hash audit record: %w", err)
		}
		r.Hash = h
		v, err := s.enc.Marshal(&r)
		if err != nil {
			return fmt.Errorf("store: encode audit record: %w", err)
		}
		if err := b.Put(seqKey(r.Seq), v); err != nil {
			return err
		}
		head = auditHead{Seq: r.Seq, Hash: h}
	}
	v, err := s.enc.Marshal(&head)
	if err != nil {
		return err
	}
	return meta.Put(keyAuditHead, v)
}

// ForEachAudit implements Store.
func (s *Bolt) ForEachAudit(ctx context.Context, from uint64, fn func(r *AuditRecord) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var r AuditRecord
			if err := s.dec.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("%w: decode audit record %x: %v", ErrAuditBroken, k, err)
			}
			if err := fn(&r); err != nil {
				return err
			}
		}
		return nil
	})
}

// VerifyAudit implements Store. The chain and its head are read in one
// read transaction: fleetd keeps appending while an operator verifies, and
// a head read after the chain would count records the walk never saw.
func (s *Bolt) VerifyAudit(ctx context.Context) (uint64, error) {
	var prev []byte
	var n uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var r AuditRecord
			if err := s.dec.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("%w: decode audit record %x: %v", ErrAuditBroken, k, err)
			}
			if r.Seq != n+1 {
				return fmt.Errorf("%w: record %d follows %d", ErrAuditBroken, r.Seq, n)
			}
			if !bytes.Equal(r.Prev, prev) {
				return fmt.Errorf("%w: record %d does not link to its predecessor", ErrAuditBroken, r.Seq)
			}
			h, err := r.computeHash(s.enc.Marshal)
			if err != nil {
				return err
			}
			if !bytes.Equal(h, r.Hash) {
				return fmt.Errorf("%w: record %d hash mismatch", ErrAuditBroken, r.Seq)
			}
			prev, n = r.Hash, r.Seq
		}
		var head auditHead
		if v := tx.Bucket(bucketMeta).Get(keyAuditHead); v != nil {
			if err := s.dec.Unmarshal(v, &head); err != nil {
				return fmt.Errorf("%w: decode audit head: %v", ErrAuditBroken, err)
			}
		}
		if head.Seq != n || !bytes.Equal(head.Hash, prev) {
			return fmt.Errorf("%w: head says %d records, chain has %d", ErrAuditBroken, head.Seq, n)
		}
		return nil
	})
	return n, err
}
