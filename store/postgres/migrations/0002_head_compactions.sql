-- DalvDB's schema, version 2: each partition's head counts the compactions
-- that dropped its tombstones. A node keeps small partitions' state in
-- memory and commits to one in a single statement, conditional on its head's
-- version, horizon and compactions being what it holds: a compaction may
-- drop tombstones without moving the horizon, and must still be seen.
ALTER TABLE dalv_heads ADD COLUMN compactions bigint NOT NULL DEFAULT 0;
