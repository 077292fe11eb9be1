package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// ErrSchemaNewer: the database was migrated by a newer fleetd than this
// one; running on it could corrupt what the newer one wrote.
var ErrSchemaNewer = errors.New("pgstore: database schema is newer than this fleetd")

// migration is one embedded schema step.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded steps, in version order.
func migrations() ([]migration, error) {
	names, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range names {
		base := strings.TrimSuffix(e.Name(), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 {
			return nil, fmt.Errorf("pgstore: migration file %q: want NNNN_name.sql", e.Name())
		}
		b, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("pgstore: migrations: version %d where %d was expected", m.version, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the newest schema this binary knows.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// migrate brings the schema to SchemaVersion. Concurrent fleetd processes
// starting together take turns on one row of kf_schema_lock (a row lock,
// which every engine has, rather than an advisory lock, which CockroachDB
// lacks); the second finds the work done.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS kf_schema (version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
		`CREATE TABLE IF NOT EXISTS kf_schema_lock (id int PRIMARY KEY, holder text)`,
		`INSERT INTO kf_schema_lock (id, holder) VALUES (1, '') ON CONFLICT (id) DO NOTHING`,
	} {
		// Two processes creating the same table at once can collide in
		// PostgreSQL's catalog (23505, 42P07, 42710); the loser's retry
		// finds it.
		for attempt := 0; ; attempt++ {
			_, err := s.pool.Exec(ctx, q)
			var pe *pgconn.PgError
			if err != nil && attempt < 5 && errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P07" || pe.Code == "42710") {
				continue
			}
			if err != nil {
				return fmt.Errorf("pgstore: prepare migrations: %w", err)
			}
			break
		}
	}
	err = s.retry(ctx, func() error {
		return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: s.iso}, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT id FROM kf_schema_lock WHERE id = 1 FOR UPDATE`); err != nil {
				return err
			}
			var cur int
			if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM kf_schema`).Scan(&cur); err != nil {
				return err
			}
			if cur > len(ms) {
				return fmt.Errorf("%w: the database is at version %d, this fleetd knows up to %d: run the newer fleetd, or restore a backup taken before it",
					ErrSchemaNewer, cur, len(ms))
			}
			for _, m := range ms[cur:] {
				if _, err := tx.Exec(ctx, m.sql); err != nil {
					return fmt.Errorf("pgstore: migration %d (%s): %w", m.version, m.name, err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO kf_schema (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
					return fmt.Errorf("pgstore: record migration %d: %w", m.version, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		if errors.Is(err, ErrSchemaNewer) {
			return err
		}
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	return nil
}
