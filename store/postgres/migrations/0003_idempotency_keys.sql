-- DalvDB's schema, version 3: backend commits made under an idempotency
-- key. A retry with the key is answered from its row instead of applied
-- again, until retention drops the row (nanos is the commit's time in Unix
-- nanoseconds). digest is the engine's digest of the request. An erase
-- keeps the rows, as it keeps dalv_devices.
CREATE TABLE dalv_idempotency_keys (
    part    text COLLATE "C" NOT NULL,
    key     bytea NOT NULL,
    version bigint NOT NULL,
    digest  bytea NOT NULL,
    nanos   bigint NOT NULL,
    PRIMARY KEY (part, key)
);
-- Compact finds old rows.
CREATE INDEX dalv_idempotency_keys_by_time ON dalv_idempotency_keys (nanos);
