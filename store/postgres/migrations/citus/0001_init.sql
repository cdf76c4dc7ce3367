-- DalvDB's schema on Citus, version 1. Every table of partition data is
-- distributed by its partition id, all colocated: a partition's rows live
-- on one shard, so every commit is a transaction of one worker, and
-- commits one phase. Statements here are sent one at a time (Citus takes no
-- multi-statement string), so each ends with a semicolon at a line's end and
-- none has one elsewhere.

-- One row per partition ever written: its version, horizon, and the
-- compactions that dropped its tombstones; stream is the feed stream of its
-- shard (dalv_streams). An Update locks this row first.
CREATE TABLE dalv_heads (
    part        text COLLATE "C" NOT NULL,
    version     bigint NOT NULL,
    horizon     bigint NOT NULL,
    compactions bigint NOT NULL DEFAULT 0,
    stream      text COLLATE "C" NOT NULL,
    PRIMARY KEY (part)
);

CREATE TABLE dalv_entries (
    part           text COLLATE "C" NOT NULL,
    key            bytea NOT NULL,
    version        bigint NOT NULL,
    scalar_version bigint NOT NULL,
    value          bytea,
    tomb_nanos     bigint,
    PRIMARY KEY (part, key)
);
CREATE INDEX dalv_entries_by_version ON dalv_entries (part, version, key);
CREATE INDEX dalv_entries_tombstones ON dalv_entries (tomb_nanos) WHERE tomb_nanos IS NOT NULL;

CREATE TABLE dalv_devices (
    part   text COLLATE "C" NOT NULL,
    device bytea NOT NULL,
    batch  bigint NOT NULL,
    PRIMARY KEY (part, device)
);

CREATE TABLE dalv_idempotency_keys (
    part    text COLLATE "C" NOT NULL,
    key     bytea NOT NULL,
    version bigint NOT NULL,
    digest  bytea NOT NULL,
    nanos   bigint NOT NULL,
    PRIMARY KEY (part, key)
);
CREATE INDEX dalv_idempotency_keys_by_time ON dalv_idempotency_keys (nanos);

-- The feed's streams, one per shard: stream is a value that hashes into
-- its shard, so its row is colocated with the partitions it orders. seq is
-- the last sequence number given, under this row's lock, by the commits
-- to the shard's partitions; floor the highest retention dropped.
CREATE TABLE dalv_streams (
    stream text COLLATE "C" NOT NULL,
    num    integer NOT NULL,
    seq    bigint NOT NULL,
    floor  bigint NOT NULL,
    PRIMARY KEY (stream)
);

-- The change feed's outbox: one row per commit, numbered densely within
-- its stream in commit order.
CREATE TABLE dalv_feed (
    stream  text COLLATE "C" NOT NULL,
    seq     bigint NOT NULL,
    num     integer NOT NULL,
    part    text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    nanos   bigint NOT NULL,
    erase   boolean NOT NULL,
    ops     bytea NOT NULL,
    PRIMARY KEY (stream, seq)
);
-- An erase finds its partition's rows.
CREATE INDEX dalv_feed_by_part ON dalv_feed (part);

-- The nodes that serve over this database (a table of the coordinator's).
CREATE TABLE dalv_nodes (
    node       text COLLATE "C" PRIMARY KEY,
    rules_hash text NOT NULL,
    seen       timestamptz NOT NULL
);

-- The distribution: citus.shard_count shards (32 unless the session sets
-- it), each a stream of the feed.
SELECT create_distributed_table('dalv_heads', 'part');
SELECT create_distributed_table('dalv_entries', 'part', colocate_with => 'dalv_heads');
SELECT create_distributed_table('dalv_devices', 'part', colocate_with => 'dalv_heads');
SELECT create_distributed_table('dalv_idempotency_keys', 'part', colocate_with => 'dalv_heads');
SELECT create_distributed_table('dalv_streams', 'stream', colocate_with => 'dalv_heads');
SELECT create_distributed_table('dalv_feed', 'stream', colocate_with => 'dalv_heads');

-- Each shard's stream: the shortest decimal string that hashes into it.
INSERT INTO dalv_streams (stream, num, seq, floor)
SELECT k, (row_number() OVER (ORDER BY shard) - 1)::integer, 0, 0
FROM (SELECT DISTINCT ON (shard) shard, k
      FROM (SELECT g::text AS k, get_shard_id_for_distribution_column('dalv_heads', g::text) AS shard
            FROM generate_series(0, 99999) g) c
      ORDER BY shard, length(k), k) f;
