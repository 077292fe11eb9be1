-- keyfleet schema 2: what several fleetd processes sharing the database
-- need to know of each other (store.Cluster). Idempotent, as schema 1.

-- One row per live (or recently live) node; alive while expires_at is
-- ahead of the database's clock.
CREATE TABLE IF NOT EXISTS kf_nodes (
    id         text        PRIMARY KEY,
    mqtt       text        NOT NULL,
    admin      text        NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

-- One row per cluster-wide job; term grows when the holder changes.
CREATE TABLE IF NOT EXISTS kf_leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    term       bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The node holding each device's newest session. since_ns is the node's
-- clock at accept, in nanoseconds, compared exactly by a later close.
CREATE TABLE IF NOT EXISTS kf_sessions (
    device   text   PRIMARY KEY,
    node     text   NOT NULL,
    since_ns bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS kf_sessions_node ON kf_sessions (node);

-- Mail between nodes, taken by its addressee with DELETE ... RETURNING.
CREATE SEQUENCE IF NOT EXISTS kf_mail_seq;
CREATE TABLE IF NOT EXISTS kf_mail (
    id        bigint      PRIMARY KEY DEFAULT nextval('kf_mail_seq'),
    to_node   text        NOT NULL,
    from_node text        NOT NULL,
    kind      smallint    NOT NULL,
    device    text        NOT NULL,
    topic     text        NOT NULL,
    serial    text        NOT NULL,
    detail    text        NOT NULL,
    payloads  bytea[]     NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS kf_mail_to ON kf_mail (to_node, id);
