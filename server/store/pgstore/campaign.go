package pgstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyfleet/keyfleet/server/store"
)

// campaignOrd orders campaigns by their number ("c12" after "c9"), others
// after them by id: the order Bolt lists them in.
func campaignOrd(id string) []byte {
	if n, err := strconv.ParseUint(id[min(1, len(id)):], 10, 64); err == nil && len(id) > 1 && id[0] == 'c' {
		return append(binary.BigEndian.AppendUint64(nil, n), id...)
	}
	return append(binary.BigEndian.AppendUint64(nil, 1<<63), id...)
}

func (s *Store) decodeCampaign(id string, b []byte) (*store.Campaign, error) {
	var c store.Campaign
	if err := s.dec.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("pgstore: decode campaign %q: %w", id, err)
	}
	return &c, nil
}

// CreateCampaign implements store.CampaignStore. An id the store gives is
// "c" and the next number of kf_campaign_seq not taken.
func (s *Store) CreateCampaign(ctx context.Context, c *store.Campaign, events ...store.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	auto := c.ID == "" // the store gives the id
	var exists bool
	err := s.retry(ctx, func() error {
		exists = false
		if auto {
			c.ID = ""
		}
		return s.inTx(ctx, func(tx pgx.Tx) error {
			for {
				if auto {
					var n int64
					if err := tx.QueryRow(ctx, `SELECT nextval('kf_campaign_seq')`).Scan(&n); err != nil {
						return err
					}
					c.ID = "c" + strconv.FormatInt(n, 10)
				}
				rec, err := s.enc.Marshal(c)
				if err != nil {
					return fmt.Errorf("encode campaign %q: %w", c.ID, err)
				}
				tag, err := tx.Exec(ctx, `INSERT INTO kf_campaigns (id, ord, rev, rec) VALUES ($1, $2, 1, $3) ON CONFLICT DO NOTHING`,
					c.ID, campaignOrd(c.ID), rec)
				if err != nil {
					return err
				}
				if tag.RowsAffected() == 1 {
					break
				}
				if !auto {
					exists = true
					return errRollback
				}
				// An id the caller chose earlier: take the next number.
			}
			evs := append([]store.Event(nil), events...)
			for i := range evs {
				if evs[i].Detail == "" {
					evs[i].Detail = "campaign " + c.ID
				}
			}
			return s.appendAudit(ctx, tx, evs)
		})
	})
	if exists {
		return fmt.Errorf("pgstore: create campaign: campaign %q: %w", c.ID, store.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("pgstore: create campaign: %w", err)
	}
	return nil
}

// UpdateCampaign implements store.CampaignStore, compare-and-set on the
// campaign's rev as UpdateDevice.
func (s *Store) UpdateCampaign(ctx context.Context, id string, fn func(c *store.Campaign) ([]store.Event, error)) (*store.Campaign, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *store.Campaign
	var fnErr error
	err := s.retry(ctx, func() error {
		out, fnErr = nil, nil
		var raw []byte
		var rev int64
		err := s.pool.QueryRow(ctx, `SELECT rev, rec FROM kf_campaigns WHERE id = $1`, id).Scan(&rev, &raw)
		if errors.Is(err, pgx.ErrNoRows) {
			fnErr = fmt.Errorf("campaign %q: %w", id, store.ErrNotExist)
			return nil
		}
		if err != nil {
			return err
		}
		old, err := s.decodeCampaign(id, raw)
		if err != nil {
			return err
		}
		c, err := s.decodeCampaign(id, raw)
		if err != nil {
			return err
		}
		events, err := fn(c)
		if errors.Is(err, store.ErrNoChange) {
			out = old
			return nil
		}
		if err != nil {
			fnErr = err
			return nil
		}
		rec, err := s.enc.Marshal(c)
		if err != nil {
			return fmt.Errorf("encode campaign %q: %w", id, err)
		}
		if err := s.inTx(ctx, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `UPDATE kf_campaigns SET rev = rev + 1, rec = $3 WHERE id = $1 AND rev = $2`, id, rev, rec)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return errCASMiss
			}
			return s.appendAudit(ctx, tx, events)
		}); err != nil {
			return err
		}
		out = c
		return nil
	})
	if fnErr != nil {
		return nil, fnErr
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: update campaign %q: %w", id, err)
	}
	return out, nil
}

// GetCampaign implements store.CampaignStore.
func (s *Store) GetCampaign(ctx context.Context, id string) (*store.Campaign, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var raw []byte
	err := s.pool.QueryRow(ctx, `SELECT rec FROM kf_campaigns WHERE id = $1`, id).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("campaign %q: %w", id, store.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: read campaign %q: %w", id, err)
	}
	return s.decodeCampaign(id, raw)
}

// ForEachCampaign implements store.CampaignStore, oldest first. Campaigns
// are few: they are read in one go, and fn runs with no connection held.
func (s *Store) ForEachCampaign(ctx context.Context, fn func(c *store.Campaign) error) error {
	rows, err := s.pool.Query(ctx, `SELECT id, rec FROM kf_campaigns ORDER BY ord`)
	if err != nil {
		return fmt.Errorf("pgstore: list campaigns: %w", err)
	}
	type row struct {
		id  string
		rec []byte
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.id, &x.rec)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("pgstore: list campaigns: %w", err)
	}
	for _, x := range all {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := s.decodeCampaign(x.id, x.rec)
		if err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

// isUniqueViolation reports a duplicate key (SQLSTATE 23505).
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}
