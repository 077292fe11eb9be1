-- keyfleet schema 1. Every statement is idempotent (IF NOT EXISTS), so that
-- an engine without transactional DDL (YugabyteDB) can re-run a migration
-- that stopped half-way. Keys are bytea: byte order, as Go sorts strings,
-- on every engine and under every collation.

-- One row per device: the record as bbolt keeps it (deterministic CBOR),
-- with rev, the compare-and-set guard every change checks and bumps.
CREATE TABLE IF NOT EXISTS kf_devices (
    id  bytea  PRIMARY KEY,
    rev bigint NOT NULL,
    rec bytea  NOT NULL
);

-- The superseded versions whose grace runs, by deadline (store.GraceIndex).
CREATE TABLE IF NOT EXISTS kf_grace (
    device   bytea  NOT NULL,
    slot     int    NOT NULL,
    version  bigint NOT NULL,
    until_ns bigint NOT NULL,
    PRIMARY KEY (device, slot, version)
);
CREATE INDEX IF NOT EXISTS kf_grace_until ON kf_grace (until_ns, device, slot, version);

-- The audit log: records in several hash chains, each with its head row;
-- seq orders all of them.
CREATE SEQUENCE IF NOT EXISTS kf_audit_seq;
CREATE TABLE IF NOT EXISTS kf_audit (
    seq   bigint PRIMARY KEY,
    chain int    NOT NULL,
    rec   bytea  NOT NULL
);
CREATE INDEX IF NOT EXISTS kf_audit_chain ON kf_audit (chain, seq);
CREATE TABLE IF NOT EXISTS kf_audit_heads (
    chain int    PRIMARY KEY,
    seq   bigint NOT NULL,
    hash  bytea,
    n     bigint NOT NULL
);

-- Campaigns, ordered by ord (the number in "c12" first).
CREATE SEQUENCE IF NOT EXISTS kf_campaign_seq;
CREATE TABLE IF NOT EXISTS kf_campaigns (
    id  text   PRIMARY KEY,
    ord bytea  NOT NULL UNIQUE,
    rev bigint NOT NULL,
    rec bytea  NOT NULL
);

-- Applied policy files, version 1, 2, ...
CREATE TABLE IF NOT EXISTS kf_policies (
    version bigint PRIMARY KEY,
    rec     bytea  NOT NULL
);

-- Settings fixed when the store was made (the number of audit chains).
CREATE TABLE IF NOT EXISTS kf_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
