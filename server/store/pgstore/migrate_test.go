package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// schemaRows returns kf_schema as "version name" lines.
func schemaRows(t *testing.T, s *Store) []string {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), `SELECT version, name, applied_at FROM kf_schema ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v int
		var name string
		var at any
		if err := rows.Scan(&v, &name, &at); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d %s", v, name))
	}
	return out
}

// TestMigrations: an empty database gets every embedded step recorded
// once; opening again changes nothing; several processes opening an empty
// database at once all succeed and apply each step once; a database
// migrated by a newer fleetd is refused, naming both versions.
func TestMigrations(t *testing.T) {
	ctx := context.Background()
	if SchemaVersion() < 1 {
		t.Fatalf("SchemaVersion() = %d, want the embedded steps", SchemaVersion())
	}
	for _, tc := range []struct {
		name    string
		openers int // Opens at once on the empty database
	}{
		{"one", 1},
		{"concurrent", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := pg.NewSchema(t)
			stores := make([]*Store, tc.openers)
			errs := make([]error, tc.openers)
			var wg sync.WaitGroup
			for i := range stores {
				wg.Add(1)
				go func() {
					defer wg.Done()
					stores[i], errs[i] = Open(ctx, dsn, Options{})
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("Open %d of %d on an empty database: %v", i+1, tc.openers, err)
				}
				defer stores[i].Close()
			}
			s := stores[0]
			first := schemaRows(t, s)
			if len(first) != SchemaVersion() {
				t.Fatalf("kf_schema after Open: %q, want %d steps", first, SchemaVersion())
			}
			var at1 string
			if err := s.pool.QueryRow(ctx, `SELECT MAX(applied_at)::text FROM kf_schema`).Scan(&at1); err != nil {
				t.Fatal(err)
			}
			again, err := Open(ctx, dsn, Options{Chains: 3}) // the database keeps its 16 chains
			if err != nil {
				t.Fatalf("second Open: %v", err)
			}
			defer again.Close()
			var at2 string
			if err := s.pool.QueryRow(ctx, `SELECT MAX(applied_at)::text FROM kf_schema`).Scan(&at2); err != nil {
				t.Fatal(err)
			}
			if got := schemaRows(t, again); strings.Join(got, ",") != strings.Join(first, ",") || at1 != at2 {
				t.Errorf("second Open changed kf_schema: %q at %s, was %q at %s", got, at2, first, at1)
			}
			if again.Chains() != 16 {
				t.Errorf("chains after reopening with Chains 3: %d, want the database's 16", again.Chains())
			}
		})
	}

	t.Run("newer schema refused", func(t *testing.T) {
		dsn := pg.NewSchema(t)
		s, err := Open(ctx, dsn, Options{})
		if err != nil {
			t.Fatal(err)
		}
		newer := SchemaVersion() + 1
		if _, err := s.pool.Exec(ctx, `INSERT INTO kf_schema (version, name) VALUES ($1, 'from-the-future')`, newer); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s2, err := Open(ctx, dsn, Options{})
		if err == nil {
			s2.Close()
			t.Fatal("Open on a database with a newer schema: got nil error")
		}
		if !errors.Is(err, ErrSchemaNewer) {
			t.Errorf("Open: got %v, want ErrSchemaNewer", err)
		}
		for _, want := range []string{"version " + strconv.Itoa(newer), "up to " + strconv.Itoa(SchemaVersion())} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	})
}
