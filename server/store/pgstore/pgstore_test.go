package pgstore

import (
	"context"
	"os"
	"testing"

	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/storetest"
)

// pg is the PostgreSQL server of this test binary; every test takes a
// database of its own.
var pg *pgtest.Server

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// open opens a store on a fresh database and closes it at the end.
func open(t *testing.T, opts Options) (*Store, string) {
	t.Helper()
	dsn := pg.NewSchema(t)
	s, err := Open(context.Background(), dsn, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dsn
}

// TestStoretest: the whole conformance suite against PostgreSQL, with the
// default 16 audit chains (so that the suite's events land on several).
func TestStoretest(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := open(t, Options{})
		return s
	})
}
