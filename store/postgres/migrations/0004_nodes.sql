-- DalvDB's schema, version 4: the nodes that serve over this database, each
-- with the hash of the write rules it enforces and when it last said so, so
-- that a node whose rules differ from its peers' can tell.
CREATE TABLE dalv_nodes (
    node       text COLLATE "C" PRIMARY KEY,
    rules_hash text NOT NULL,
    seen       timestamptz NOT NULL
);
