package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/server/store"
)

var _ store.Cluster = (*Store)(nil)

// Heartbeat records n alive until ttl from now on the database's clock, so
// that the nodes' own clocks never decide who is alive, and returns the
// nodes alive now, by id.
func (s *Store) Heartbeat(ctx context.Context, n store.Node, ttl time.Duration) ([]store.Node, error) {
	if n.ID == "" {
		return nil, errors.New("pgstore: heartbeat: node id is required")
	}
	started := n.Started
	if started.IsZero() {
		started = s.now()
	}
	var live []store.Node
	err := s.retry(ctx, func() error {
		live = live[:0]
		if _, err := s.pool.Exec(ctx, `INSERT INTO kf_nodes (id, mqtt, admin, started_at, seen_at, expires_at)
			VALUES ($1, $2, $3, $4, now(), now() + $5::interval)
			ON CONFLICT (id) DO UPDATE SET mqtt = excluded.mqtt, admin = excluded.admin,
				started_at = excluded.started_at, seen_at = excluded.seen_at, expires_at = excluded.expires_at`,
			n.ID, n.MQTT, n.Admin, started, ttl); err != nil {
			return err
		}
		rows, err := s.pool.Query(ctx, `SELECT id, mqtt, admin, started_at, seen_at FROM kf_nodes WHERE expires_at > now() ORDER BY id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var x store.Node
			if err := rows.Scan(&x.ID, &x.MQTT, &x.Admin, &x.Started, &x.Seen); err != nil {
				rows.Close()
				return err
			}
			live = append(live, x)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: heartbeat of node %s: %w", n.ID, err)
	}
	return live, nil
}

// Leave removes node's row, its sessions and the mail still addressed to
// it, in one transaction.
func (s *Store) Leave(ctx context.Context, node string) error {
	err := s.retry(ctx, func() error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			for _, q := range []string{
				`DELETE FROM kf_sessions WHERE node = $1`,
				`DELETE FROM kf_mail WHERE to_node = $1`,
				`DELETE FROM kf_nodes WHERE id = $1`,
			} {
				if _, err := tx.Exec(ctx, q, node); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("pgstore: node %s leaving: %w", node, err)
	}
	return nil
}

// Lease takes the lease if it is free or expired, or renews it for its
// holder, in one upsert on the database's clock (no advisory locks, which
// CockroachDB lacks).
func (s *Store) Lease(ctx context.Context, name, holder string, ttl time.Duration) (uint64, bool, error) {
	var term int64
	ok := true
	err := s.retry(ctx, func() error {
		ok = true
		err := s.pool.QueryRow(ctx, `INSERT INTO kf_leases (name, holder, term, expires_at) VALUES ($1, $2, 1, now() + $3::interval)
			ON CONFLICT (name) DO UPDATE
				SET holder = excluded.holder,
				    term = kf_leases.term + (CASE WHEN kf_leases.holder = excluded.holder THEN 0 ELSE 1 END),
				    expires_at = excluded.expires_at
				WHERE kf_leases.holder = excluded.holder OR kf_leases.expires_at < now()
			RETURNING term`, name, holder, ttl).Scan(&term)
		if errors.Is(err, pgx.ErrNoRows) {
			ok = false
			return nil
		}
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("pgstore: lease %s for %s: %w", name, holder, err)
	}
	if !ok {
		return 0, false, nil
	}
	return uint64(term), true, nil
}

// ReleaseLease expires holder's lease now.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	err := s.retry(ctx, func() error {
		_, err := s.pool.Exec(ctx, `UPDATE kf_leases SET expires_at = now() WHERE name = $1 AND holder = $2`, name, holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("pgstore: release lease %s of %s: %w", name, holder, err)
	}
	return nil
}

// PutSessions writes a batch of session changes of node: the ups first
// (a newer session wins over an older one of another node), then the
// downs, each removing only node's row of that exact Since. Devices are
// sorted, so that two nodes writing overlapping batches lock rows in the
// same order.
func (s *Store) PutSessions(ctx context.Context, node string, up, down []store.Session) error {
	if len(up) == 0 && len(down) == 0 {
		return nil
	}
	upIDs, upSince := sessionColumns(up)
	downIDs, downSince := sessionColumns(down)
	err := s.retry(ctx, func() error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			if len(upIDs) > 0 {
				if _, err := tx.Exec(ctx, `INSERT INTO kf_sessions (device, node, since_ns)
					SELECT u.d, $2, u.s FROM unnest($1::text[], $3::bigint[]) AS u(d, s)
					ON CONFLICT (device) DO UPDATE SET node = excluded.node, since_ns = excluded.since_ns
						WHERE kf_sessions.since_ns <= excluded.since_ns`, upIDs, node, upSince); err != nil {
					return err
				}
			}
			if len(downIDs) > 0 {
				if _, err := tx.Exec(ctx, `DELETE FROM kf_sessions WHERE node = $2
					AND (device, since_ns) IN (SELECT u.d, u.s FROM unnest($1::text[], $3::bigint[]) AS u(d, s))`,
					downIDs, node, downSince); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("pgstore: sessions of node %s: %w", node, err)
	}
	return nil
}

// sessionColumns returns the devices (sorted, each once: the newest Since
// wins) and their Since in nanoseconds.
func sessionColumns(ss []store.Session) ([]string, []int64) {
	newest := make(map[string]int64, len(ss))
	for _, x := range ss {
		if ns, ok := newest[x.Device]; !ok || x.Since.UnixNano() > ns {
			newest[x.Device] = x.Since.UnixNano()
		}
	}
	ids := make([]string, 0, len(newest))
	for id := range newest {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	since := make([]int64, len(ids))
	for i, id := range ids {
		since[i] = newest[id]
	}
	return ids, since
}

// Sessions returns where the given devices (nil: all) have a session on a
// node alive now; a dead node's rows are left out, not deleted (Sweep does
// that).
func (s *Store) Sessions(ctx context.Context, devices []string) (map[string]store.Session, error) {
	if devices != nil && len(devices) == 0 {
		return map[string]store.Session{}, nil
	}
	q := `SELECT s.device, s.node, s.since_ns FROM kf_sessions s JOIN kf_nodes n ON n.id = s.node WHERE n.expires_at > now()`
	args := []any{}
	if devices != nil {
		q += ` AND s.device = ANY($1::text[])`
		args = append(args, devices)
	}
	out := map[string]store.Session{}
	err := s.retry(ctx, func() error {
		clear(out)
		rows, err := s.pool.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var x store.Session
			var ns int64
			if err := rows.Scan(&x.Device, &x.Node, &ns); err != nil {
				return err
			}
			x.Since = time.Unix(0, ns)
			out[x.Device] = x
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: sessions: %w", err)
	}
	return out, nil
}

// Send stores mail and, on PostgreSQL, notifies each addressee when the
// transaction commits (CockroachDB: the addressees' polling finds it).
func (s *Store) Send(ctx context.Context, mail ...store.Mail) error {
	if len(mail) == 0 {
		return nil
	}
	notify := !s.notify.cockroach(ctx, s)
	err := s.retry(ctx, func() error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			to := map[string]bool{}
			for _, m := range mail {
				if m.To == "" {
					return errors.New("mail without an addressee")
				}
				payloads := m.Payloads
				if payloads == nil {
					payloads = [][]byte{}
				}
				b.Queue(`INSERT INTO kf_mail (to_node, from_node, kind, device, topic, serial, detail, payloads)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, m.To, m.From, int16(m.Kind), m.Device, m.Topic, m.Serial, m.Detail, payloads)
				to[m.To] = true
			}
			if notify {
				for _, n := range sortedKeys(to) {
					b.Queue(`SELECT pg_notify($1, $2)`, mailChannel, n)
				}
			}
			return tx.SendBatch(ctx, b).Close()
		})
	})
	if err != nil {
		return fmt.Errorf("pgstore: send %d mail: %w", len(mail), err)
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Receive takes up to max mail of node, oldest first, deleting it in the
// same statement: deleting is the cursor, so two receivers of one node
// never get the same mail and nothing needs ordering across senders.
func (s *Store) Receive(ctx context.Context, node string, max int) ([]store.Mail, error) {
	if max <= 0 {
		max = 256
	}
	var out []store.Mail
	err := s.retry(ctx, func() error {
		out = out[:0]
		rows, err := s.pool.Query(ctx, `DELETE FROM kf_mail WHERE id IN
			(SELECT id FROM kf_mail WHERE to_node = $1 ORDER BY id LIMIT $2)
			RETURNING id, to_node, from_node, kind, device, topic, serial, detail, payloads, at`, node, max)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var m store.Mail
			var kind int16
			if err := rows.Scan(&m.ID, &m.To, &m.From, &kind, &m.Device, &m.Topic, &m.Serial, &m.Detail, &m.Payloads, &m.At); err != nil {
				return err
			}
			m.Kind = store.MailKind(kind)
			out = append(out, m)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: receive mail of node %s: %w", node, err)
	}
	slices.SortFunc(out, func(a, b store.Mail) int { return cmpInt64(a.ID, b.ID) })
	return out, nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Sweep removes nodes whose heartbeat ran out more than deadFor ago, and
// then the sessions of nodes that have no row and the mail to them that
// is older than deadFor (mail to a node that left, or never came).
func (s *Store) Sweep(ctx context.Context, deadFor time.Duration) (int, error) {
	var n int64
	err := s.retry(ctx, func() error {
		n = 0
		return s.inTx(ctx, func(tx pgx.Tx) error {
			for _, q := range []string{
				`DELETE FROM kf_nodes WHERE expires_at < now() - $1::interval`,
				`DELETE FROM kf_sessions WHERE node NOT IN (SELECT id FROM kf_nodes)`,
				`DELETE FROM kf_mail WHERE to_node NOT IN (SELECT id FROM kf_nodes) AND at < now() - $1::interval`,
			} {
				args := []any{}
				if strings.Contains(q, "$1") {
					args = append(args, deadFor)
				}
				tag, err := tx.Exec(ctx, q, args...)
				if err != nil {
					return err
				}
				n += tag.RowsAffected()
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("pgstore: sweep dead nodes: %w", err)
	}
	return int(n), nil
}
