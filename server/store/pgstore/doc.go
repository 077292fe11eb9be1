// Package pgstore is the PostgreSQL store.Store: what several fleetd
// processes share when one machine no longer carries the fleet (bbolt
// allows one process per file). It implements every capability the bbolt
// store has (BatchCreator, GraceIndex, CampaignStore, PolicyStore) and
// passes the same storetest suite, against a real server.
//
// # Basics
//
// Records are stored as bbolt stores them (deterministic CBOR), one row per
// device, campaign or policy version, so the two backends cannot drift in
// what a record holds. Every change is compare-and-set: a device row
// carries rev, read with the record and checked by the UPDATE that writes
// it (UPDATE ... WHERE id = $1 AND rev = $2). A row holds every slot and
// version of its device, so the guard covers each (device, slot, version)
// transition: two fleetd nodes that both move version 3 of a device cannot
// both win. A miss (another node wrote first) re-reads the device and runs
// the caller's function again, which store.Store's contract allows; so does
// a serialization failure (SQLSTATE 40001, what CockroachDB and SERIALIZABLE
// PostgreSQL report instead) and a deadlock (40P01).
//
// The audit log is Chains hash chains (16 by default, fixed when the
// database is first opened). An event goes to the chain of its device
// (FNV-1a of the id), and the write locks that chain's head row only, so
// devices on different chains never wait for each other; one global chain
// would put every write in the fleet behind one row. Each record carries its
// chain (store.AuditRecord.Chain) and links to the previous record of that
// chain. Seq comes from one sequence, taken while the chain's head is
// locked: it orders the whole log and increases along every chain.
// VerifyAudit walks every chain in one snapshot and checks each against its
// head (last seq, hash and count), so dropping the newest record of a chain
// is caught too.
//
// storetest's expectations map as follows: Seq numbers records 1..n in the
// order they were written when nothing fails (the suite's cases), and Prev
// links to the previous record of the same chain, which for bbolt's single
// chain is the previous record.
//
// Schema migrations are embedded (migrations/NNNN_name.sql), recorded in
// kf_schema and run by Open under a row lock on kf_schema_lock (an
// insert-based guard: no advisory locks). A database whose schema is newer
// than the binary is refused with ErrSchemaNewer.
//
// Stats counts the statements the store sent (a pgx tracer): what a
// rotation costs the database, for sizing.
//
// # SQL subset
//
// The store keeps to SQL that CockroachDB and YugabyteDB also accept, so
// that an operator may run it on either: bytea, text and bigint columns;
// sequences (nextval) and generate_series; INSERT ... ON CONFLICT DO
// NOTHING; SELECT ... FOR UPDATE; UPDATE ... FROM unnest(...); an INSERT
// in a WITH (data-modifying common table expression); tuple
// comparison for keyset paging; CREATE ... IF NOT EXISTS. No reliance on
// LISTEN/NOTIFY (on PostgreSQL it only wakes a cluster node early, see
// notify.go; on CockroachDB nodes poll), no advisory locks, PL/pgSQL, triggers, collations or jsonb operators; no
// reliance on READ COMMITTED (under SERIALIZABLE the same statements retry
// on 40001).
//
// # Caveats
//
// Seq may skip numbers: a transaction that takes one and then fails leaves
// a gap (chains never have gaps: they are linked by hash). Records of
// different chains become visible in commit order, which may differ from
// Seq order by the few records in flight; a reader tailing the log by Seq
// (metrics) may therefore miss a record committed late, while VerifyAudit
// and a read from the start see all of them. ForEachDevice and
// ForEachAudit read in pages of short transactions, not one snapshot: each
// record is seen once, in order, as it was when its page was read.
package pgstore
