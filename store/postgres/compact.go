package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dalvdb/dalv/store"
)

// Compact works in chunks, each its own transaction, so that it holds no
// partition's lock for long and its progress survives a failure.
const (
	compactParts = 500  // partitions looked up at a time
	compactFeed  = 2000 // feed rows dropped per transaction
)

// Compaction's statements.
const (
	// tombParts lists partitions holding tombstones older than the cutoff.
	tombParts = `SELECT DISTINCT part FROM dalv_entries
		WHERE tomb_nanos < $1 AND part > $2 ORDER BY part LIMIT $3`
	// lockHeadOnly locks a partition's head against Updates.
	lockHeadOnly = `SELECT version FROM dalv_heads WHERE part = $1 FOR UPDATE`
	// dropTombs drops a partition's old tombstones, raises its horizon to
	// the highest version dropped, and counts the compaction on its head.
	dropTombs = `WITH d AS (
		DELETE FROM dalv_entries WHERE part = $1 AND tomb_nanos < $2 RETURNING version
	), m AS (
		SELECT count(*) AS n, max(version) AS v FROM d
	), u AS (
		UPDATE dalv_heads h SET horizon = GREATEST(h.horizon, m.v), compactions = h.compactions + 1
		FROM m WHERE h.part = $1 AND m.n > 0
	)
	SELECT n FROM m`
	// dropKeys drops up to $2 idempotency key rows of commits made before
	// $1. It takes no head lock: a row is written only when its key has
	// none, and only compaction drops one.
	dropKeys = `WITH d AS (
		DELETE FROM dalv_idempotency_keys WHERE (part, key) IN (
			SELECT part, key FROM dalv_idempotency_keys WHERE nanos < $1 LIMIT $2)
		RETURNING 1
	)
	SELECT count(*) FROM d`
	// compactFeedLock keeps two nodes' Compacts from dropping feed rows at
	// once (a transaction-scoped advisory lock).
	compactFeedLock = `SELECT pg_advisory_xact_lock(7236937201839419241)`
	// oldFeed lists the oldest readable feed rows above the floor.
	oldFeed = `SELECT f.feed_key, f.part, f.nanos FROM dalv_feed f, dalv_feed_floor fl
		WHERE (f.feed_key, f.part) > (fl.feed_key, fl.part) AND f.feed_key < ` + feedHorizon + `
		ORDER BY f.feed_key, f.part LIMIT $1`
	// dropFeed drops the feed rows from the floor up to a position, and
	// raises the floor to it.
	dropFeed = `WITH fl AS (
		UPDATE dalv_feed_floor SET feed_key = $1, part = $2 RETURNING 1
	)
	DELETE FROM dalv_feed f USING dalv_feed_floor old
	WHERE (f.feed_key, f.part) > (old.feed_key, old.part) AND (f.feed_key, f.part) <= ($1, $2)`
)

// Compact implements [store.Store]. It drops, partition by partition under
// the head's lock, the tombstones made before cutoff, raising each
// horizon; then the idempotency key rows made before cutoff; then the oldest feed rows while their commit time is before
// cutoff, never past a row a reader may not pass yet (it waits for those as
// Feed does), so the feed stays a contiguous run above its floor. Several nodes may compact at once: each
// row is dropped, and counted, by one of them.
func (s *Store) Compact(ctx context.Context, cutoff time.Time) (store.CompactStats, error) {
	var st store.CompactStats
	if err := s.gate.Enter(); err != nil {
		return st, err
	}
	defer s.gate.Exit()
	if cutoff.Before(time.Unix(0, 1)) {
		return st, nil // nothing was committed before it: times are clamped at 0
	}
	cut := cutoff.UnixNano()
	compact := s.compactPartition
	if s.streams != nil {
		compact = s.citusCompactPartition
	}
	err := s.eachPart(ctx, tombParts, cut, func(part string) error {
		n, err := compact(ctx, part, cut)
		if err != nil {
			return fmt.Errorf("compact %s: %w", part, err)
		}
		st.Tombstones += n
		return nil
	})
	if err != nil {
		return st, err
	}
	if s.streams != nil {
		return s.citusCompactRest(ctx, cut, st)
	}
	for {
		if s.gate.Closing() {
			return st, store.ErrClosed
		}
		var n int64
		err := s.query(ctx, func(rows pgx.Rows) error {
			for rows.Next() {
				if err := rows.Scan(&n); err != nil {
					return err
				}
			}
			return nil
		}, dropKeys, cut, compactFeed)
		st.Keys += int(n)
		if err != nil {
			return st, fmt.Errorf("compact idempotency keys: %w", err)
		}
		if n < compactFeed {
			break
		}
	}
	// Rows committed but held back by transactions in flight are waited
	// for, as Feed waits, so that a commit that returned can be dropped.
	var held int64
	if err := s.pool.QueryRow(ctx, selectHeld).Scan(&held); err != nil {
		return st, fmt.Errorf("compact feed: %w", storeErr(ctx, err))
	}
	if held != 0 && s.feedWait > 0 {
		if err := s.waitHorizon(ctx, held); err != nil {
			return st, fmt.Errorf("compact feed: %w", err)
		}
	}
	for {
		if s.gate.Closing() {
			return st, store.ErrClosed
		}
		n, more, err := s.compactFeed(ctx, cut)
		st.FeedRecords += n
		if err != nil {
			return st, fmt.Errorf("compact feed: %w", err)
		}
		if !more {
			return st, nil
		}
	}
}

// eachPart calls fn for each partition that sql, a query of partitions
// like tombParts, lists for cut, a chunk of partitions at a time, until fn
// fails or the store closes.
func (s *Store) eachPart(ctx context.Context, sql string, cut int64, fn func(part string) error) error {
	after := ""
	for {
		var parts []string
		err := s.query(ctx, func(rows pgx.Rows) error {
			for rows.Next() {
				var p string
				if err := rows.Scan(&p); err != nil {
					return err
				}
				parts = append(parts, p)
			}
			return nil
		}, sql, cut, after, compactParts)
		if err != nil {
			return fmt.Errorf("compact: %w", err)
		}
		for _, part := range parts {
			if s.gate.Closing() {
				return store.ErrClosed
			}
			if err := fn(part); err != nil {
				return err
			}
		}
		if len(parts) < compactParts {
			return nil
		}
		after = parts[len(parts)-1]
	}
}

// compactPartition drops part's tombstones older than cut in one
// transaction, and returns how many it dropped.
func (s *Store) compactPartition(ctx context.Context, part string, cut int64) (int, error) {
	var n int64
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(lockHeadOnly, part)
	b.Queue(dropTombs, part, cut).QueryRow(func(row pgx.Row) error { return row.Scan(&n) })
	b.Queue("COMMIT")
	if err := s.sendBatch(ctx, b); err != nil {
		return 0, err
	}
	return int(n), nil
}

// compactFeed drops up to compactFeed of the oldest feed rows made before
// cut, in one transaction; more reports that there may be others.
func (s *Store) compactFeed(caller context.Context, cut int64) (n int, more bool, err error) {
	ctx, stop := s.opContext(caller)
	defer stop()
	conn, err := s.acquire(caller, ctx)
	if err != nil {
		return 0, false, err
	}
	defer conn.Release()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, compactFeedLock); err != nil {
			return err
		}
		var (
			lastKey  int64
			lastPart string
			rows     int
		)
		rs, err := tx.Query(ctx, oldFeed, compactFeed)
		if err != nil {
			return err
		}
		for rs.Next() {
			var key, nanos int64
			var part string
			if err := rs.Scan(&key, &part, &nanos); err != nil {
				rs.Close()
				return err
			}
			rows++
			if nanos >= cut {
				break
			}
			lastKey, lastPart = key, part
			n++
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		more = n == rows && rows == compactFeed
		tag, err := tx.Exec(ctx, dropFeed, lastKey, lastPart)
		if err != nil {
			return err
		}
		// An erase may have dropped some of them meanwhile.
		n = int(tag.RowsAffected())
		return nil
	})
	if err != nil {
		return 0, false, storeErr(ctx, err)
	}
	return n, more, nil
}

// query runs one statement on a pooled connection, as one operation (see
// opContext), and hands its rows to scan.
func (s *Store) query(ctx context.Context, scan func(pgx.Rows) error, sql string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(sql, args...).Query(scan)
	return s.sendBatch(ctx, b)
}
