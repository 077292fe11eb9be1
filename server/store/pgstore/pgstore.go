package pgstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyfleet/keyfleet/server/store"
)

// Options configures a Store. Zero values take the defaults.
type Options struct {
	// Chains is the number of audit hash chains a new database gets;
	// 0 means 16. A database keeps the number it was made with.
	Chains int
	// Isolation of write transactions; "" leaves the engine's default
	// (READ COMMITTED on PostgreSQL, SERIALIZABLE on CockroachDB). Both
	// are correct: the compare-and-set guard and the head-row locks do not
	// depend on it.
	Isolation pgx.TxIsoLevel
	// ConnectTimeout bounds Open's first connection; 0 means 10 s.
	ConnectTimeout time.Duration
	// MaxConns of the pool; 0 means pgxpool's default (4 or the CPUs).
	MaxConns int32
	// Now is the clock for audit timestamps; nil means time.Now.
	Now func() time.Time
}

// Stats are counts since Open.
type Stats struct {
	// Statements sent to the server, BEGIN and COMMIT included.
	Statements uint64
	// CASMisses: writes that found the row changed since it was read and
	// ran the caller's function again.
	CASMisses uint64
	// Retries after a serialization failure or a deadlock.
	Retries uint64
}

// Store is the PostgreSQL store.Store.
type Store struct {
	pool   *pgxpool.Pool
	enc    cbor.EncMode
	dec    cbor.DecMode
	now    func() time.Time
	iso    pgx.TxIsoLevel
	chains int
	stats  *counters
	notify notifier // store.Cluster's wake-ups (notify.go)
}

type counters struct {
	statements, casMisses, retries atomic.Uint64
}

var (
	_ store.Store         = (*Store)(nil)
	_ store.BatchCreator  = (*Store)(nil)
	_ store.GraceIndex    = (*Store)(nil)
	_ store.CampaignStore = (*Store)(nil)
	_ store.PolicyStore   = (*Store)(nil)
)

// maxAttempts bounds the retries of one write: far more than contention on
// one device produces, few enough that a bug cannot spin forever.
const maxAttempts = 200

// errCASMiss: the row changed between read and write.
var errCASMiss = errors.New("pgstore: row changed since it was read")

// Open connects to the database named by dsn (a postgres:// URL or a
// key=value string), brings its schema up to date and returns the store.
// It fails, having changed nothing, when the server cannot be reached, the
// DSN is malformed or the schema is newer than this binary.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	if opts.Chains <= 0 {
		opts.Chains = 16
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pgstore: parse DSN: %w", err)
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = opts.ConnectTimeout
	}
	c := &counters{}
	cfg.ConnConfig.Tracer = tracer{c}
	encOpts := cbor.CoreDetEncOptions()
	encOpts.Time = cbor.TimeRFC3339Nano // as Bolt: keep sub-second deadlines
	enc, err := encOpts.EncMode()
	if err != nil {
		return nil, err
	}
	dec, err := cbor.DecOptions{MaxArrayElements: 1 << 20, MaxMapPairs: 1 << 20}.DecMode()
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("%s:%d/%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database) // never the password
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: connect to %s: %w", where, err)
	}
	pctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: connect to %s: %w", where, err)
	}
	s := &Store{pool: pool, enc: enc, dec: dec, now: opts.Now, iso: opts.Isolation, stats: c}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if s.chains, err = s.setUpChains(ctx, opts.Chains); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the pool.
func (s *Store) Close() error {
	s.notify.close()
	s.pool.Close()
	return nil
}

// Stats returns the counts since Open.
func (s *Store) Stats() Stats {
	return Stats{Statements: s.stats.statements.Load(), CASMisses: s.stats.casMisses.Load(), Retries: s.stats.retries.Load()}
}

// Chains is the number of audit chains of the database.
func (s *Store) Chains() int { return s.chains }

// tracer counts the statements pgx sends (queries, BEGIN, COMMIT, each
// statement of a batch).
type tracer struct{ c *counters }

func (t tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.c.statements.Add(1)
	return ctx
}

func (tracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (tracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (t tracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {
	t.c.statements.Add(1)
}

func (tracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// setUpChains records the number of audit chains on first use and makes
// their head rows; it returns the number the database has.
func (s *Store) setUpChains(ctx context.Context, want int) (int, error) {
	var n int
	err := s.retry(ctx, func() error {
		return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: s.iso}, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO kf_meta (key, value) VALUES ('audit_chains', $1) ON CONFLICT (key) DO NOTHING`,
				fmt.Sprint(want)); err != nil {
				return err
			}
			var v string
			if err := tx.QueryRow(ctx, `SELECT value FROM kf_meta WHERE key = 'audit_chains'`).Scan(&v); err != nil {
				return err
			}
			if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
				return fmt.Errorf("pgstore: kf_meta audit_chains = %q: want a positive number", v)
			}
			_, err := tx.Exec(ctx, `INSERT INTO kf_audit_heads (chain, seq, hash, n)
				SELECT g, 0, NULL, 0 FROM generate_series(0, $1 - 1) AS g ON CONFLICT (chain) DO NOTHING`, n)
			return err
		})
	})
	if err != nil {
		return 0, fmt.Errorf("pgstore: set up audit chains: %w", err)
	}
	return n, nil
}

// chainOf is the audit chain of a device's events.
func (s *Store) chainOf(device string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(device))
	return h.Sum32() % uint32(s.chains)
}

// retryable reports whether err is worth running the write again for.
func (s *Store) retryable(err error) bool {
	if errors.Is(err, errCASMiss) {
		s.stats.casMisses.Add(1)
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01") {
		s.stats.retries.Add(1)
		return true
	}
	return false
}

// retry runs op until it succeeds, fails for good, or ctx ends; between
// attempts it waits a short random time so that the losers of a race do
// not collide again at once.
func (s *Store) retry(ctx context.Context, op func() error) error {
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil || !s.retryable(err) {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("pgstore: gave up after %d attempts: %w", attempt, err)
		}
		wait := time.Duration(rand.Int64N(int64(min(time.Millisecond<<min(attempt, 6), 50*time.Millisecond)) + 1))
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgstore: %w (retrying after %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

// inTx runs fn in a write transaction.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: s.iso}, fn)
}
