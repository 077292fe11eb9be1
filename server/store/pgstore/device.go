package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// devicePage is how many devices one read of ForEachDevice fetches: short
// reads, and fn runs with no connection held (it may write).
const devicePage = 500

func (s *Store) decodeDevice(id string, b []byte) (*store.Device, error) {
	var d store.Device
	if err := s.dec.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("pgstore: decode device %q: %w", id, err)
	}
	return &d, nil
}

// graceRow is one superseded version in the grace index.
type graceRow struct {
	slot    int32
	version int64
	until   int64
}

// graceRows are the grace-index rows of d, in a fixed order.
func graceRows(d *store.Device) []graceRow {
	var out []graceRow
	for slot, st := range d.Slots {
		for _, k := range st.Versions {
			if k.State == lifecycle.StateSuperseded {
				out = append(out, graceRow{slot: int32(slot), version: int64(k.Version), until: k.GraceUntil.UnixNano()})
			}
		}
	}
	slices.SortFunc(out, func(a, b graceRow) int {
		if a.slot != b.slot {
			return int(a.slot - b.slot)
		}
		return int(a.version - b.version)
	})
	return out
}

// putGrace makes the grace rows of device id those of now, given those of
// the record it replaces; nothing is sent when they are the same.
func putGrace(ctx context.Context, tx pgx.Tx, id string, old, now []graceRow) error {
	if slices.Equal(old, now) {
		return nil
	}
	if len(old) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM kf_grace WHERE device = $1`, []byte(id)); err != nil {
			return err
		}
	}
	return insertGrace(ctx, tx, []string{id}, [][]graceRow{now})
}

// insertGrace adds the grace rows of several devices in one statement.
func insertGrace(ctx context.Context, tx pgx.Tx, ids []string, rows [][]graceRow) error {
	var devs [][]byte
	var slots []int32
	var versions, untils []int64
	for i, rs := range rows {
		for _, r := range rs {
			devs, slots = append(devs, []byte(ids[i])), append(slots, r.slot)
			versions, untils = append(versions, r.version), append(untils, r.until)
		}
	}
	if len(devs) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO kf_grace (device, slot, version, until_ns)
		SELECT * FROM unnest($1::bytea[], $2::int[], $3::bigint[], $4::bigint[])`, devs, slots, versions, untils)
	return err
}

// CreateDevice implements store.Store.
func (s *Store) CreateDevice(ctx context.Context, d *store.Device, events ...store.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rec, err := s.enc.Marshal(d)
	if err != nil {
		return fmt.Errorf("pgstore: encode device %q: %w", d.ID, err)
	}
	grace := graceRows(d)
	exists := false
	err = s.retry(ctx, func() error {
		exists = false
		return s.inTx(ctx, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `INSERT INTO kf_devices (id, rev, rec) VALUES ($1, 1, $2) ON CONFLICT (id) DO NOTHING`, []byte(d.ID), rec)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				exists = true
				return errRollback
			}
			if err := insertGrace(ctx, tx, []string{d.ID}, [][]graceRow{grace}); err != nil {
				return err
			}
			return s.appendAudit(ctx, tx, events)
		})
	})
	if exists {
		return fmt.Errorf("device %q: %w", d.ID, store.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("pgstore: create device %q: %w", d.ID, err)
	}
	return nil
}

// errRollback ends a transaction that found nothing to do.
var errRollback = errors.New("pgstore: rollback")

// CreateDevices implements store.BatchCreator: one transaction, a few
// statements for the whole batch.
func (s *Store) CreateDevices(ctx context.Context, devs []*store.Device, events []store.Event) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	errs := make([]error, len(devs))
	ids, recs := make([][]byte, 0, len(devs)), make([][]byte, 0, len(devs))
	seen := map[string]bool{}
	for i, d := range devs {
		if seen[d.ID] { // the batch's own duplicate: the first one wins, as in Bolt
			errs[i] = fmt.Errorf("device %q: %w", d.ID, store.ErrExists)
			continue
		}
		seen[d.ID] = true
		rec, err := s.enc.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("pgstore: encode device %q: %w", d.ID, err)
		}
		ids, recs = append(ids, []byte(d.ID)), append(recs, rec)
	}
	var created map[string]bool
	err := s.retry(ctx, func() error {
		created = map[string]bool{}
		return s.inTx(ctx, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `INSERT INTO kf_devices (id, rev, rec)
				SELECT id, 1, rec FROM unnest($1::bytea[], $2::bytea[]) AS u(id, rec)
				ON CONFLICT (id) DO NOTHING RETURNING id`, ids, recs)
			if err != nil {
				return err
			}
			for rows.Next() {
				var id []byte
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return err
				}
				created[string(id)] = true
			}
			if err := rows.Err(); err != nil {
				return err
			}
			var gIDs []string
			var gRows [][]graceRow
			var evs []store.Event
			for i, d := range devs {
				if errs[i] != nil || !created[d.ID] {
					continue
				}
				if g := graceRows(d); len(g) > 0 {
					gIDs, gRows = append(gIDs, d.ID), append(gRows, g)
				}
				if i < len(events) {
					evs = append(evs, events[i]) // only the created devices' events
				}
			}
			if err := insertGrace(ctx, tx, gIDs, gRows); err != nil {
				return err
			}
			return s.appendAudit(ctx, tx, evs)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: create devices: %w", err)
	}
	for i, d := range devs {
		if errs[i] == nil && !created[d.ID] {
			errs[i] = fmt.Errorf("device %q: %w", d.ID, store.ErrExists)
		}
	}
	return errs, nil
}

// load reads a device's record and its rev.
func (s *Store) load(ctx context.Context, id string) ([]byte, int64, error) {
	var rec []byte
	var rev int64
	err := s.pool.QueryRow(ctx, `SELECT rev, rec FROM kf_devices WHERE id = $1`, []byte(id)).Scan(&rev, &rec)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, fmt.Errorf("device %q: %w", id, store.ErrNotExist)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("pgstore: read device %q: %w", id, err)
	}
	return rec, rev, nil
}

// UpdateDevice implements store.Store: read, apply fn, write if the row is
// still at the rev read (else read again and re-run fn).
func (s *Store) UpdateDevice(ctx context.Context, id string, fn func(d *store.Device) ([]store.Event, error)) (*store.Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *store.Device
	var fnErr error
	err := s.retry(ctx, func() error {
		out, fnErr = nil, nil
		raw, rev, err := s.load(ctx, id)
		if err != nil {
			fnErr = err
			return nil
		}
		old, err := s.decodeDevice(id, raw)
		if err != nil {
			return err
		}
		d, err := s.decodeDevice(id, raw)
		if err != nil {
			return err
		}
		events, err := fn(d)
		if errors.Is(err, store.ErrNoChange) {
			out = old
			return nil
		}
		if err != nil {
			fnErr = err
			return nil
		}
		for _, st := range d.Slots {
			st.Prune()
		}
		rec, err := s.enc.Marshal(d)
		if err != nil {
			return fmt.Errorf("pgstore: encode device %q: %w", id, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.inTx(ctx, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `UPDATE kf_devices SET rev = rev + 1, rec = $3 WHERE id = $1 AND rev = $2`, []byte(id), rev, rec)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return errCASMiss
			}
			if err := putGrace(ctx, tx, id, graceRows(old), graceRows(d)); err != nil {
				return err
			}
			return s.appendAudit(ctx, tx, events)
		}); err != nil {
			return err
		}
		out = d
		return nil
	})
	if fnErr != nil {
		return nil, fnErr
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: update device %q: %w", id, err)
	}
	return out, nil
}

// GetDevice implements store.Store.
func (s *Store) GetDevice(ctx context.Context, id string) (*store.Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, _, err := s.load(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.decodeDevice(id, raw)
}

// ForEachDevice implements store.Store, in pages ordered by id (bytes).
func (s *Store) ForEachDevice(ctx context.Context, fn func(d *store.Device) error) error {
	var after []byte
	first := true
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var rows pgx.Rows
		var err error
		if first {
			rows, err = s.pool.Query(ctx, `SELECT id, rec FROM kf_devices ORDER BY id LIMIT $1`, devicePage)
		} else {
			rows, err = s.pool.Query(ctx, `SELECT id, rec FROM kf_devices WHERE id > $1 ORDER BY id LIMIT $2`, after, devicePage)
		}
		if err != nil {
			return fmt.Errorf("pgstore: list devices: %w", err)
		}
		type row struct{ id, rec []byte }
		page, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.id, &x.rec)
			return x, err
		})
		if err != nil {
			return fmt.Errorf("pgstore: list devices: %w", err)
		}
		for _, r := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, err := s.decodeDevice(string(r.id), r.rec)
			if err != nil {
				return err
			}
			if err := fn(d); err != nil {
				return err
			}
		}
		if len(page) < devicePage {
			return nil
		}
		after, first = page[len(page)-1].id, false
	}
}

// gracePage is how many grace rows one read of ForEachGrace fetches.
const gracePage = 1000

// ForEachGrace implements store.GraceIndex, earliest deadline first.
func (s *Store) ForEachGrace(ctx context.Context, fn func(device string, slot uint8, version uint32, until time.Time) error) error {
	type row struct {
		dev     []byte
		slot    int32
		version int64
		until   int64
	}
	var last *row
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var rows pgx.Rows
		var err error
		if last == nil {
			rows, err = s.pool.Query(ctx, `SELECT device, slot, version, until_ns FROM kf_grace
				ORDER BY until_ns, device, slot, version LIMIT $1`, gracePage)
		} else {
			rows, err = s.pool.Query(ctx, `SELECT device, slot, version, until_ns FROM kf_grace
				WHERE (until_ns, device, slot, version) > ($1, $2, $3, $4)
				ORDER BY until_ns, device, slot, version LIMIT $5`, last.until, last.dev, last.slot, last.version, gracePage)
		}
		if err != nil {
			return fmt.Errorf("pgstore: read grace index: %w", err)
		}
		page, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.dev, &x.slot, &x.version, &x.until)
			return x, err
		})
		if err != nil {
			return fmt.Errorf("pgstore: read grace index: %w", err)
		}
		for _, r := range page {
			if err := fn(string(r.dev), uint8(r.slot), uint32(r.version), time.Unix(0, r.until)); err != nil {
				return err
			}
		}
		if len(page) < gracePage {
			return nil
		}
		last = &page[len(page)-1]
	}
}
