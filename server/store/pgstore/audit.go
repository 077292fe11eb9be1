package pgstore

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/server/store"
)

// auditPage is how many records one read of ForEachAudit fetches.
const auditPage = 1000

// head is an audit chain's head row.
type head struct {
	seq  int64
	hash []byte
	n    int64
}

// appendAudit numbers, chains and stores events in tx: it locks the head
// rows of the chains the events go to (in chain order, so that two writers
// never wait for each other crosswise), takes one Seq per event while
// holding them, and moves the heads on. Three statements, whatever the
// number of events.
func (s *Store) appendAudit(ctx context.Context, tx pgx.Tx, events []store.Event) error {
	if len(events) == 0 {
		return nil
	}
	chainOf := make([]uint32, len(events))
	var chains []int32
	for i, ev := range events {
		chainOf[i] = s.chainOf(ev.Device)
		if !slices.Contains(chains, int32(chainOf[i])) {
			chains = append(chains, int32(chainOf[i]))
		}
	}
	slices.Sort(chains)
	heads := map[uint32]*head{}
	rows, err := tx.Query(ctx, `SELECT chain, seq, hash, n FROM kf_audit_heads WHERE chain = ANY($1) ORDER BY chain FOR UPDATE`, chains)
	if err != nil {
		return fmt.Errorf("lock audit heads: %w", err)
	}
	for rows.Next() {
		var c int32
		h := &head{}
		if err := rows.Scan(&c, &h.seq, &h.hash, &h.n); err != nil {
			rows.Close()
			return fmt.Errorf("lock audit heads: %w", err)
		}
		heads[uint32(c)] = h
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("lock audit heads: %w", err)
	}
	if len(heads) != len(chains) {
		return fmt.Errorf("%w: %d of the heads of chains %v are missing", store.ErrAuditBroken, len(chains)-len(heads), chains)
	}
	rows, err = tx.Query(ctx, `SELECT nextval('kf_audit_seq') FROM generate_series(1, $1)`, len(events))
	if err != nil {
		return fmt.Errorf("number audit records: %w", err)
	}
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("number audit records: %w", err)
	}
	slices.Sort(seqs)
	now := s.now().UTC()
	recSeqs, recChains, recs := make([]int64, len(events)), make([]int32, len(events)), make([][]byte, len(events))
	for i, ev := range events {
		c := chainOf[i]
		h := heads[c]
		r := store.AuditRecord{Seq: uint64(seqs[i]), Time: now, Event: ev, Prev: h.hash, Chain: c}
		hash, err := r.ComputeHash(s.enc.Marshal)
		if err != nil {
			return fmt.Errorf("hash audit record: %w", err)
		}
		r.Hash = hash
		b, err := s.enc.Marshal(&r)
		if err != nil {
			return fmt.Errorf("encode audit record: %w", err)
		}
		recSeqs[i], recChains[i], recs[i] = seqs[i], int32(c), b
		*h = head{seq: seqs[i], hash: hash, n: h.n + 1}
	}
	hSeqs, hHashes, hNs := make([]int64, len(chains)), make([][]byte, len(chains)), make([]int64, len(chains))
	for i, c := range chains {
		h := heads[uint32(c)]
		hSeqs[i], hHashes[i], hNs[i] = h.seq, h.hash, h.n
	}
	// One statement stores the records and moves the heads: a
	// data-modifying WITH always runs to completion.
	tag, err := tx.Exec(ctx, `WITH ins AS (
			INSERT INTO kf_audit (seq, chain, rec) SELECT * FROM unnest($1::bigint[], $2::int[], $3::bytea[]))
		UPDATE kf_audit_heads AS h SET seq = u.seq, hash = u.hash, n = u.n
		FROM unnest($4::int[], $5::bigint[], $6::bytea[], $7::bigint[]) AS u(chain, seq, hash, n) WHERE h.chain = u.chain`,
		recSeqs, recChains, recs, chains, hSeqs, hHashes, hNs)
	if err != nil {
		return fmt.Errorf("store audit records: %w", err)
	}
	if tag.RowsAffected() != int64(len(chains)) {
		return fmt.Errorf("%w: moved %d of %d audit heads", store.ErrAuditBroken, tag.RowsAffected(), len(chains))
	}
	return nil
}

// Audit implements store.Store.
func (s *Store) Audit(ctx context.Context, events ...store.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	if err := s.retry(ctx, func() error {
		return s.inTx(ctx, func(tx pgx.Tx) error { return s.appendAudit(ctx, tx, events) })
	}); err != nil {
		return fmt.Errorf("pgstore: audit: %w", err)
	}
	return nil
}

func (s *Store) decodeAudit(seq int64, b []byte) (*store.AuditRecord, error) {
	var r store.AuditRecord
	if err := s.dec.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: decode audit record %d: %v", store.ErrAuditBroken, seq, err)
	}
	return &r, nil
}

// ForEachAudit implements store.Store, in Seq order across all chains, in
// pages of short reads.
func (s *Store) ForEachAudit(ctx context.Context, from uint64, fn func(r *store.AuditRecord) error) error {
	next := int64(min(from, 1<<62))
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		rows, err := s.pool.Query(ctx, `SELECT seq, rec FROM kf_audit WHERE seq >= $1 ORDER BY seq LIMIT $2`, next, auditPage)
		if err != nil {
			return fmt.Errorf("pgstore: read audit log: %w", err)
		}
		type row struct {
			seq int64
			rec []byte
		}
		page, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.seq, &x.rec)
			return x, err
		})
		if err != nil {
			return fmt.Errorf("pgstore: read audit log: %w", err)
		}
		for _, x := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := s.decodeAudit(x.seq, x.rec)
			if err != nil {
				return err
			}
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(page) < auditPage {
			return nil
		}
		next = page[len(page)-1].seq + 1
	}
}

// VerifyAudit implements store.Store: every chain, against its head, in
// one snapshot (appends go on meanwhile). It returns the number of records
// in all chains.
func (s *Store) VerifyAudit(ctx context.Context) (uint64, error) {
	var total uint64
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		total = 0
		heads := map[int32]head{}
		rows, err := tx.Query(ctx, `SELECT chain, seq, hash, n FROM kf_audit_heads`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var c int32
			var h head
			if err := rows.Scan(&c, &h.seq, &h.hash, &h.n); err != nil {
				rows.Close()
				return err
			}
			heads[c] = h
		}
		if err := rows.Err(); err != nil {
			return err
		}
		walked := map[int32]head{}
		check := func(c int32) error { // chain c ended: does it end at its head?
			h, w := heads[c], walked[c]
			if h.n != w.n || h.seq != w.seq || !bytes.Equal(h.hash, w.hash) {
				return fmt.Errorf("%w: chain %d: head says %d records up to %d, chain has %d up to %d",
					store.ErrAuditBroken, c, h.n, h.seq, w.n, w.seq)
			}
			return nil
		}
		rows, err = tx.Query(ctx, `SELECT chain, seq, rec FROM kf_audit ORDER BY chain, seq`)
		if err != nil {
			return err
		}
		defer rows.Close()
		cur := int32(-1)
		for rows.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var c int32
			var seq int64
			var b []byte
			if err := rows.Scan(&c, &seq, &b); err != nil {
				return err
			}
			if c != cur {
				if _, ok := heads[c]; !ok {
					return fmt.Errorf("%w: record %d is on chain %d, which has no head", store.ErrAuditBroken, seq, c)
				}
				if cur >= 0 {
					if err := check(cur); err != nil {
						return err
					}
				}
				cur = c
			}
			r, err := s.decodeAudit(seq, b)
			if err != nil {
				return err
			}
			w := walked[c]
			switch {
			case r.Seq != uint64(seq) || r.Chain != uint32(c):
				return fmt.Errorf("%w: record %d on chain %d says it is record %d on chain %d", store.ErrAuditBroken, seq, c, r.Seq, r.Chain)
			case !bytes.Equal(r.Prev, w.hash):
				return fmt.Errorf("%w: record %d does not link to its predecessor on chain %d", store.ErrAuditBroken, seq, c)
			}
			h, err := r.ComputeHash(s.enc.Marshal)
			if err != nil {
				return err
			}
			if !bytes.Equal(h, r.Hash) {
				return fmt.Errorf("%w: record %d hash mismatch", store.ErrAuditBroken, seq)
			}
			walked[c] = head{seq: seq, hash: r.Hash, n: w.n + 1}
			total++
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for c := range heads {
			if err := check(c); err != nil {
				return err
			}
		}
		return nil
	})
	return total, err
}
