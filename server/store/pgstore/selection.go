package pgstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/server/store"
)

// Bolt is the --store value that keeps fleetd's default: the bbolt file in
// its data directory.
const Bolt = "bolt"

// isDSN reports whether a --store value names a PostgreSQL database.
func isDSN(v string) bool {
	return strings.HasPrefix(v, "postgres://") || strings.HasPrefix(v, "postgresql://")
}

// CheckSelection checks a --store value without connecting: "" or "bolt",
// or a postgres:// DSN that parses. What fleetd checks before it opens or
// starts anything.
func CheckSelection(v string) error {
	switch {
	case v == "" || v == Bolt:
		return nil
	case isDSN(v):
		if _, err := pgx.ParseConfig(v); err != nil { // pgx redacts the password in its errors
			return fmt.Errorf("pgstore: %w", err)
		}
		return nil
	}
	return fmt.Errorf("pgstore: store %q: want %q (the file in the data directory) or a PostgreSQL URL postgres://USER@HOST:PORT/DB", redact(v), Bolt)
}

// redact hides anything after a colon that could be a password.
func redact(v string) string {
	if i := strings.Index(v, "@"); i >= 0 {
		return "…" + v[i:]
	}
	return v
}

// OpenSelection opens the store a --store value names: nil (untyped) for
// "" and "bolt", so that fleetd opens its bbolt file; the PostgreSQL store,
// its schema brought up to date, for a DSN. fleetd run hands the result to
// server.Config.Store; fleetd init opens it to make the schema and to fail
// before it makes any key when the database cannot be reached.
func OpenSelection(ctx context.Context, v string) (store.Store, error) {
	if err := CheckSelection(v); err != nil {
		return nil, err
	}
	if !isDSN(v) {
		return nil, nil
	}
	s, err := Open(ctx, v, Options{})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Where names the database the store is on (host:port/database), without
// the credentials: what logs may say.
func (s *Store) Where() string {
	c := s.pool.Config().ConnConfig
	return fmt.Sprintf("%s:%d/%s", c.Host, c.Port, c.Database)
}
