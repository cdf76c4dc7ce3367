package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dalvdb/dalv/store"
)

// feedHorizon is the highest feed key a reader may pass now, plus one: every
// row below the oldest transaction id still running is committed or never
// will be, because a transaction's rows have keys at least its id, and a
// transaction that has no id yet will get one above every id given so far.
// Ids count from the timeline's base, as feed keys do (see xactID). It is
// one value per statement (an InitPlan), so it serves as an index bound.
// Note that it is the oldest id in the whole server, any database.
const feedHorizon = `(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint + ` + timelineBase + `)`

// A feed page is read in one REPEATABLE READ READ ONLY transaction, floor
// and rows from one snapshot, and the transaction ends before fn sees the
// rows, so a slow reader holds no snapshot open.
const (
	beginFeed   = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
	selectFloor = "SELECT feed_key, part FROM dalv_feed_floor"
	selectFeed  = `SELECT feed_key, part, version, nanos, erase, ops FROM dalv_feed
		WHERE (feed_key, part) > ($1, $2) AND feed_key < ` + feedHorizon + `
		ORDER BY feed_key, part LIMIT $3`
	selectLast = `SELECT feed_key, part FROM dalv_feed WHERE feed_key < ` + feedHorizon + `
		ORDER BY feed_key DESC, part DESC LIMIT 1`
	// selectHeld is the highest key of the committed records readers may
	// not pass yet, or 0.
	selectHeld = `SELECT COALESCE(max(feed_key), 0) FROM dalv_feed WHERE feed_key >= ` + feedHorizon
	// pageReplicated makes a page's COMMIT wait for the synchronous
	// standbys when the page has records (see feedPage).
	pageReplicated = awaitStandbys + `
		AND EXISTS (SELECT FROM dalv_feed WHERE (feed_key, part) > ($1, $2) AND feed_key < ` + feedHorizon + `)`
)

// Feed pages grow from minFeedPage while their records are small.
const (
	minFeedPage = 16
	maxFeedPage = 256
)

// feedRow is one row of dalv_feed.
type feedRow struct {
	key            int64
	part           string
	version, nanos int64
	erase          bool
	ops            []byte
}

// Feed implements [store.Feeder]. Records that are committed but that
// readers may not pass yet (a transaction that took its id before theirs is
// still in flight) are waited for, up to Options.FeedWait, so a record is
// usually delivered as soon as its commit returns: commits in flight take
// milliseconds. A transaction open longer holds them back until a later
// call.
func (s *Store) Feed(ctx context.Context, after store.FeedPos, fn func(store.FeedRecord) (bool, error)) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	defer s.gate.Exit()
	if s.streams != nil {
		return s.citusFeed(ctx, after, fn)
	}
	key, part, err := decodePos(after)
	if err != nil {
		return err
	}
	limit := minFeedPage
	waited := false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		pg, err := s.feedPage(ctx, key, part, after, limit)
		if err != nil {
			return err
		}
		for _, row := range pg.rows {
			if err := ctx.Err(); err != nil {
				return err
			}
			p, err := parsePartID(row.part)
			if err != nil {
				return fmt.Errorf("read feed: %w", err)
			}
			more, err := fn(store.FeedRecord{
				Pos:       encodePos(row.key, row.part),
				Partition: p,
				Version:   uint64(row.version),
				Time:      time.Unix(0, row.nanos),
				Erase:     row.erase,
				Ops:       row.ops,
			})
			if err != nil || !more {
				return err
			}
		}
		if n := len(pg.rows); n > 0 {
			last := pg.rows[n-1]
			key, part, after = last.key, last.part, encodePos(last.key, last.part)
		}
		if len(pg.rows) == limit {
			limit = min(max(nextLimit(limit, pg.size), minFeedPage), maxFeedPage)
			continue
		}
		if pg.held == 0 || waited || s.feedWait <= 0 {
			return ctx.Err()
		}
		// Committed records wait behind transactions in flight: wait for
		// those (not for any that begin later), then read once more.
		waited = true
		if err := s.waitHorizon(ctx, pg.held); err != nil {
			return err
		}
	}
}

// waitHorizon waits until readers may pass feed key held, or for
// Options.FeedWait, polling with a growing interval.
func (s *Store) waitHorizon(ctx context.Context, held int64) error {
	deadline := time.Now().Add(s.feedWait)
	pause := 500 * time.Microsecond
	for {
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		var horizon int64
		b := &pgx.Batch{}
		b.Queue("SELECT " + feedHorizon).QueryRow(func(row pgx.Row) error { return row.Scan(&horizon) })
		if err := s.sendBatch(ctx, b); err != nil {
			return fmt.Errorf("read feed: %w", err)
		}
		if horizon > held || time.Now().After(deadline) {
			return nil
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// feedPage is one page of the feed.
type feedPage struct {
	rows []feedRow
	size int   // about the bytes in rows
	held int64 // the highest key readers may not pass yet, 0 for none
}

// feedPage reads up to limit rows after (key, part), or fails with
// ErrCompacted when retention dropped rows after it.
//
// With synchronous standbys, the rows are returned only once the standbys
// have them (see awaitStandbys): the page's COMMIT waits until they have
// the WAL, and with it each commit the page's snapshot saw; when the
// server dies first, the page fails instead.
func (s *Store) feedPage(ctx context.Context, key int64, part string, after store.FeedPos, limit int) (feedPage, error) {
	var (
		pg        feedPage
		floorKey  int64
		floorPart string
	)
	b := &pgx.Batch{}
	b.Queue(beginFeed)
	b.Queue(selectFloor).QueryRow(func(row pgx.Row) error { return row.Scan(&floorKey, &floorPart) })
	b.Queue(selectFeed, key, part, limit).Query(func(rs pgx.Rows) error {
		for rs.Next() {
			var r feedRow
			if err := rs.Scan(&r.key, &r.part, &r.version, &r.nanos, &r.erase, &r.ops); err != nil {
				return err
			}
			pg.rows = append(pg.rows, r)
			pg.size += len(r.ops) + len(r.part) + 40
		}
		return nil
	})
	b.Queue(selectHeld).QueryRow(func(row pgx.Row) error { return row.Scan(&pg.held) })
	b.Queue(pageReplicated, key, part)
	b.Queue("COMMIT")
	if err := s.sendBatch(ctx, b); err != nil {
		return pg, fmt.Errorf("read feed: %w", err)
	}
	if after < encodePos(floorKey, floorPart) {
		return pg, fmt.Errorf("read feed after %x: below the horizon: %w", string(after), store.ErrCompacted)
	}
	return pg, nil
}

// FeedBounds implements [store.Feeder].
func (s *Store) FeedBounds(ctx context.Context) (horizon, last store.FeedPos, err error) {
	if err := s.gate.Enter(); err != nil {
		return "", "", err
	}
	defer s.gate.Exit()
	if s.streams != nil {
		return s.citusFeedBounds(ctx)
	}
	var (
		floorKey, lastKey   int64
		floorPart, lastPart string
	)
	b := &pgx.Batch{}
	b.Queue(beginFeed)
	b.Queue(selectFloor).QueryRow(func(row pgx.Row) error { return row.Scan(&floorKey, &floorPart) })
	b.Queue(selectLast).Query(func(rs pgx.Rows) error {
		for rs.Next() {
			if err := rs.Scan(&lastKey, &lastPart); err != nil {
				return err
			}
		}
		return nil
	})
	b.Queue("COMMIT")
	if err := s.sendBatch(ctx, b); err != nil {
		return "", "", fmt.Errorf("feed bounds: %w", err)
	}
	horizon, last = encodePos(floorKey, floorPart), encodePos(lastKey, lastPart)
	return horizon, max(horizon, last), nil
}

// sendBatch sends b on a pooled connection and reads every result, as one
// operation (see opContext).
func (s *Store) sendBatch(ctx context.Context, b *pgx.Batch) error {
	octx, stop := s.opContext(ctx)
	defer stop()
	conn, err := s.acquire(ctx, octx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := conn.SendBatch(octx, b).Close(); err != nil {
		s.rollback(conn)
		return connErr(octx, conn, err)
	}
	return nil
}
