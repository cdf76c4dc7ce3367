-- DalvDB's schema, version 1. Every table of partition data has the
-- partition id first in its primary key, so that Citus can distribute all of
-- them on that column, colocated; see docs/postgres.md. Partition ids are
-- "u:NAME" or "s:NAME" (see partID), compared bytewise (COLLATE "C").

-- One row per partition ever written: its version and horizon, and the feed
-- key of its last commit, which keeps the partition's feed keys increasing.
-- An Update locks this row first: it serialises the partition's commits.
CREATE TABLE dalv_heads (
    part     text COLLATE "C" NOT NULL,
    version  bigint NOT NULL,
    horizon  bigint NOT NULL,
    feed_key bigint NOT NULL,
    PRIMARY KEY (part)
);

-- The current state of every key: live (value set, tomb_nanos NULL) or a
-- tombstone (value NULL, tomb_nanos the tombstoning commit's time in Unix
-- nanoseconds, which retention compares).
CREATE TABLE dalv_entries (
    part           text COLLATE "C" NOT NULL,
    key            bytea NOT NULL,
    version        bigint NOT NULL,
    scalar_version bigint NOT NULL,
    value          bytea,
    tomb_nanos     bigint,
    PRIMARY KEY (part, key)
);
-- Changes walks a partition in (version, key) order.
CREATE INDEX dalv_entries_by_version ON dalv_entries (part, version, key);
-- Compact finds old tombstones.
CREATE INDEX dalv_entries_tombstones ON dalv_entries (tomb_nanos) WHERE tomb_nanos IS NOT NULL;

-- Each device's last applied batch: the idempotency record of syncs.
CREATE TABLE dalv_devices (
    part   text COLLATE "C" NOT NULL,
    device bytea NOT NULL,
    batch  bigint NOT NULL,
    PRIMARY KEY (part, device)
);

-- The change feed's outbox: one row per commit. feed_key is at least the
-- committing transaction's id, and above the partition's previous one.
CREATE TABLE dalv_feed (
    part     text COLLATE "C" NOT NULL,
    feed_key bigint NOT NULL,
    version  bigint NOT NULL,
    nanos    bigint NOT NULL,
    erase    boolean NOT NULL,
    ops      bytea NOT NULL,
    PRIMARY KEY (part, feed_key)
);
-- Readers follow the feed in (feed_key, part) order.
CREATE INDEX dalv_feed_order ON dalv_feed (feed_key, part);

-- The highest feed position retention dropped (one row; a reference table on
-- Citus): a reader behind it may have missed records.
CREATE TABLE dalv_feed_floor (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    feed_key bigint NOT NULL,
    part     text COLLATE "C" NOT NULL
);
INSERT INTO dalv_feed_floor (feed_key, part) VALUES (0, '');
