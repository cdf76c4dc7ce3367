-- DalvDB's schema on Citus, version 1. Every table of partition data is
-- distributed by its partition id, all colocated: a partition's rows live
-- on one shard, so every commit is a transaction of one worker, and
-- commits one phase. Statements here are sent one at a time (Citus takes no
-- multi-statement string), so each ends with a semicolon at a line's end,
-- and none has one elsewhere but inside a function's $$ body.

-- One connection per worker for this transaction: Citus creates a
-- distributed function only in a transaction that has not used several.
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

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

-- dalv_commit writes a commit made on a partition's state as read, in one
-- call that Citus runs on the partition's worker, as a transaction of its
-- own there: the head moves to p_next only if it is still at p_version
-- (absent for 0), p_horizon and p_compactions; then the device's batch,
-- the entries, the stream's next number and the feed row. It returns false,
-- having written nothing, when the head had moved. It runs in the schema
-- it was created in, on whichever server runs it.
CREATE FUNCTION dalv_commit(p_part text, p_version bigint, p_horizon bigint, p_compactions bigint,
    p_stream text, p_next bigint, p_device bytea, p_batch bigint, p_nanos bigint,
    p_keys bytea[], p_svs bigint[], p_vals bytea[], p_dels boolean[], p_ops bytea) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_seq bigint;
    v_num integer;
BEGIN
    IF p_version = 0 THEN
        INSERT INTO dalv_heads (part, version, horizon, compactions, stream)
        VALUES (p_part, p_next, 0, 0, p_stream) ON CONFLICT (part) DO NOTHING;
    ELSE
        UPDATE dalv_heads SET version = p_next
        WHERE part = p_part AND version = p_version AND horizon = p_horizon AND compactions = p_compactions;
    END IF;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_device IS NOT NULL THEN
        INSERT INTO dalv_devices (part, device, batch) VALUES (p_part, p_device, p_batch)
        ON CONFLICT (part, device) DO UPDATE SET batch = EXCLUDED.batch;
    END IF;
    FOR i IN 1 .. COALESCE(array_length(p_keys, 1), 0) LOOP
        INSERT INTO dalv_entries (part, key, version, scalar_version, value, tomb_nanos)
        VALUES (p_part, p_keys[i], p_next, p_svs[i],
            CASE WHEN p_dels[i] THEN NULL ELSE COALESCE(p_vals[i], '\x'::bytea) END,
            CASE WHEN p_dels[i] THEN p_nanos END)
        ON CONFLICT (part, key) DO UPDATE SET version = EXCLUDED.version, scalar_version = EXCLUDED.scalar_version,
            value = EXCLUDED.value, tomb_nanos = EXCLUDED.tomb_nanos;
    END LOOP;
    UPDATE dalv_streams SET seq = seq + 1 WHERE stream = p_stream RETURNING seq, num INTO v_seq, v_num;
    INSERT INTO dalv_feed (stream, seq, num, part, version, nanos, erase, ops)
    VALUES (p_stream, v_seq, v_num, p_part, p_next, p_nanos, false, p_ops);
    RETURN true;
END
$$;
SELECT create_distributed_function('dalv_commit(text, bigint, bigint, bigint, text, bigint, bytea, bigint, bigint, bytea[], bigint[], bytea[], boolean[], bytea)',
    '$1', colocate_with => 'dalv_heads');
