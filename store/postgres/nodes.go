package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// peerRules records a node's rules hash and reads its live peers' in one
// statement; rows of nodes silent for ten times the liveness window go.
const peerRules = `WITH me AS (
	INSERT INTO dalv_nodes (node, rules_hash, seen) VALUES ($1, $2, now())
	ON CONFLICT (node) DO UPDATE SET rules_hash = EXCLUDED.rules_hash, seen = EXCLUDED.seen
), gone AS (
	DELETE FROM dalv_nodes WHERE node <> $1 AND seen < now() - make_interval(secs => $3::float8 * 10)
)
SELECT node, rules_hash FROM dalv_nodes WHERE node <> $1 AND seen >= now() - make_interval(secs => $3::float8)`

// PeerRules records that this store's node enforces the write rules of
// hash (empty for none), and returns the rules hash of every other node on
// the same schema that recorded one within live, by node id. dalv serve
// calls it every few seconds, to tell when the nodes behind one load
// balancer enforce different rules.
func (s *Store) PeerRules(ctx context.Context, hash string, live time.Duration) (map[string]string, error) {
	if err := s.gate.Enter(); err != nil {
		return nil, err
	}
	defer s.gate.Exit()
	octx, stop := s.opContext(ctx)
	defer stop()
	rows, _ := s.pool.Query(octx, peerRules, s.node, hash, live.Seconds())
	peers := make(map[string]string)
	var node, h string
	_, err := pgx.ForEachRow(rows, []any{&node, &h}, func() error {
		peers[node] = h
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("peer rules: %w", storeErr(octx, err))
	}
	return peers, nil
}
