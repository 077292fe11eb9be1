package pgtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

var pg *Server

func TestMain(m *testing.M) { os.Exit(Main(m, &pg)) }

// Without server binaries Start fails, naming the script that installs
// them; it never skips.
func TestMissingBinariesNamed(t *testing.T) {
	t.Setenv("PGTEST_BINDIR", t.TempDir())
	s, err := Start()
	if err == nil {
		s.Stop()
		t.Fatal("Start without binaries: got nil error")
	}
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "scripts/deps.sh --with-postgres") {
		t.Errorf("Start without binaries: got %v, want ErrNotInstalled naming scripts/deps.sh --with-postgres", err)
	}
}

// Each schema and each database is a namespace of its own: a table made
// in one is not seen from another.
func TestNamespacesAreSeparate(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		make func(t testing.TB) string
	}{
		{"schema", pg.NewSchema},
		{"database", pg.NewDatabase},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tc.make(t), tc.make(t)
			ca, err := pgx.Connect(ctx, a)
			if err != nil {
				t.Fatal(err)
			}
			defer ca.Close(ctx)
			if _, err := ca.Exec(ctx, `CREATE TABLE kf_probe (x int)`); err != nil {
				t.Fatal(err)
			}
			cb, err := pgx.Connect(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			defer cb.Close(ctx)
			if _, err := cb.Exec(ctx, `CREATE TABLE kf_probe (x int)`); err != nil {
				t.Errorf("the same table in a second %s: %v, want it free", tc.name, err)
			}
		})
	}
}

// A cluster whose test binary is gone is removed by the next Start; one
// whose owner lives is left alone.
func TestLeftoversReaped(t *testing.T) {
	bin, err := binDir()
	if err != nil {
		t.Fatal(err)
	}
	mk := func(owner string) string {
		dir, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(owner), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dead, live := mk("2147483646"), mk(strconv.Itoa(os.Getpid()))
	reapLeftovers(bin)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("cluster of a dead test binary: %v, want removed", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("cluster of a live test binary: %v, want kept", err)
	}
}
