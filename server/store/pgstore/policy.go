package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/server/store"
)

// AppendPolicy implements store.PolicyStore. The version is the newest
// plus one; two nodes appending at once collide on the primary key and the
// loser tries again with the next number.
func (s *Store) AppendPolicy(ctx context.Context, p *store.PolicyVersion, events ...store.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var n int64
	err := s.retry(ctx, func() error {
		err := s.inTx(ctx, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM kf_policies`).Scan(&n); err != nil {
				return err
			}
			q := *p
			q.Version = uint64(n)
			rec, err := s.enc.Marshal(&q)
			if err != nil {
				return fmt.Errorf("encode policy: %w", err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO kf_policies (version, rec) VALUES ($1, $2)`, n, rec); err != nil {
				return err
			}
			evs := append([]store.Event(nil), events...)
			for i := range evs {
				if evs[i].Detail == "" {
					evs[i].Detail = fmt.Sprintf("policy v%d sha256 %s", n, p.SHA256)
				}
			}
			return s.appendAudit(ctx, tx, evs)
		})
		if isUniqueViolation(err) {
			return errCASMiss // another node took the number
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("pgstore: append policy: %w", err)
	}
	p.Version = uint64(n)
	return nil
}

// LatestPolicy implements store.PolicyStore.
func (s *Store) LatestPolicy(ctx context.Context) (*store.PolicyVersion, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var raw []byte
	err := s.pool.QueryRow(ctx, `SELECT rec FROM kf_policies ORDER BY version DESC LIMIT 1`).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("policy: %w", store.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: latest policy: %w", err)
	}
	var p store.PolicyVersion
	if err := s.dec.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("pgstore: decode policy: %w", err)
	}
	return &p, nil
}

// ForEachPolicy implements store.PolicyStore, oldest first.
func (s *Store) ForEachPolicy(ctx context.Context, fn func(p *store.PolicyVersion) error) error {
	rows, err := s.pool.Query(ctx, `SELECT rec FROM kf_policies ORDER BY version`)
	if err != nil {
		return fmt.Errorf("pgstore: list policies: %w", err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return fmt.Errorf("pgstore: list policies: %w", err)
	}
	for _, raw := range all {
		if err := ctx.Err(); err != nil {
			return err
		}
		var p store.PolicyVersion
		if err := s.dec.Unmarshal(raw, &p); err != nil {
			return fmt.Errorf("pgstore: decode policy: %w", err)
		}
		if err := fn(&p); err != nil {
			return err
		}
	}
	return nil
}
