package postgres

// On Citus (the citus extension present in the database), the store lays
// out its tables distributed by partition id, all colocated
// (migrations/citus), so a partition's rows live on one shard and each
// commit is a transaction of one worker, committed in one phase:
//
//   - An Update's statements each name the partition (or its shard's
//     stream), so Citus routes every one to the shard's worker; there are
//     no data-modifying CTEs and no INSERT ... SELECT from outside the
//     shard, which Citus would run through the coordinator, and no
//     non-immutable functions where Citus refuses them.
//   - Grouped commits are off: a statement of many partitions' commits
//     would span shards, and so workers. A commit is one call that the
//     partition's worker runs (citusDirect, below), or an Update's own
//     transaction (counted by dalv_postgres_commits_total{way}).
//   - The feed cannot use transaction ids, which each worker issues for
//     itself. Each shard has a stream instead: a row of dalv_streams,
//     colocated with the shard, whose counter every commit to the shard's
//     partitions takes under the row's lock as its last write. A stream's
//     records are numbered densely in commit order, a reader that read up
//     to n has every committed record at or below n, and a record at or
//     below n can never appear later. A position is one number per stream.
//     The counter moves with its shard (a shard move copies it with the
//     rest), so a move stalls the feed at most while writes to the shard
//     are blocked, and never makes it skip.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dalvdb/dalv/store"
)

// hasCitus reports whether the database has the citus extension.
func hasCitus(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	var ok bool
	err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')").Scan(&ok)
	return ok, err
}

// citusNodeCommits reads every node's synchronous_commit as a session of
// the store's user gets it, the coordinator's included.
const citusNodeCommits = `SELECT n.nodename, n.nodeport, r.success, r.result
	FROM run_command_on_all_nodes('SHOW synchronous_commit') r JOIN pg_dist_node n USING (nodeid)
	ORDER BY n.nodeid`

// citusCommitsDurable refuses a cluster where a node commits
// asynchronously (synchronous_commit = off). Besides what a crash loses,
// a shard move there can lose acknowledged commits with no crash: it waits
// for logical replication to reach the WAL the source has written
// (pg_current_wal_lsn) once writes are blocked, and an asynchronous commit
// may be acknowledged, and seen by readers, before its WAL is written. Such
// a commit can miss the new placement, and the stream's numbers go on
// there without it, so a reader that saw it skips the commit that takes its
// number. With local or any stronger setting, a commit's WAL is written
// before it returns.
func citusCommitsDurable(ctx context.Context, pool *pgxpool.Pool) error {
	rows, _ := pool.Query(ctx, citusNodeCommits)
	var (
		host    string
		port    int
		ok      bool
		setting string
		bad     []string
	)
	_, err := pgx.ForEachRow(rows, []any{&host, &port, &ok, &setting}, func() error {
		switch {
		case !ok:
			return fmt.Errorf("read synchronous_commit on Citus node %s:%d: %s", host, port, setting)
		case setting == "off":
			bad = append(bad, fmt.Sprintf("%s:%d", host, port))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check the Citus nodes' synchronous_commit: %w", err)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w on Citus node %s for this user and database: "+
			"a shard move loses commits acknowledged under asynchronous commit, so DalvDB needs local or stronger on every node "+
			"(ALTER SYSTEM SET synchronous_commit = on, then SELECT pg_reload_conf(), on each)", errCommitsAsync, strings.Join(bad, ", "))
	}
	return nil
}

// errCommitsAsync marks citusCommitsDurable's refusal, apart from its
// failures to ask.
var errCommitsAsync = errors.New("synchronous_commit is off")

// watchCommitsDurable checks every node's synchronous_commit again every
// interval until the store closes, as Open did: a node whose setting is
// turned off later, or a worker added with it off, makes the store refuse
// commits and report itself unhealthy (see [Store.Healthy]) until a later
// check finds every node local or stronger again. A check that cannot ask
// (PostgreSQL unreachable) changes nothing.
func (s *Store) watchCommitsDurable(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	// A check in flight ends when the store closes, not at its timeout.
	closing, stop := s.untilClosed(context.Background())
	defer stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		limit := s.timeout
		if limit <= 0 {
			limit = DefaultTimeout
		}
		ctx, cancel := context.WithTimeout(closing, limit)
		err := citusCommitsDurable(ctx, s.pool)
		cancel()
		switch {
		case errors.Is(err, errCommitsAsync):
			refused := fmt.Errorf("%w: commits refused: %w", store.ErrUnavailable, err)
			if s.async.Swap(&refused) == nil {
				s.log.Error("postgres store: refusing commits", "err", err)
			}
		case err == nil:
			if s.async.Swap(nil) != nil {
				s.log.Info("postgres store: every Citus node commits synchronously again; accepting commits")
			}
		}
	}
}

// Healthy implements [store.Checker]: on Citus, an error wrapping
// [store.ErrUnavailable] while a node commits asynchronously (see
// watchCommitsDurable), when every Update fails with it; otherwise nil.
func (s *Store) Healthy() error {
	if err := s.async.Load(); err != nil {
		return *err
	}
	return nil
}

// streams are the feed's streams on Citus: one per shard of dalv_heads.
type streams struct {
	names   []string      // the stream values, by number
	byShard map[int64]int // a shard's id to its stream's number
}

// loadStreams reads the streams and the shard each belongs to, and checks
// that every shard has one.
func loadStreams(ctx context.Context, pool *pgxpool.Pool) (*streams, error) {
	rows, _ := pool.Query(ctx, `SELECT num, stream, get_shard_id_for_distribution_column('dalv_heads', stream)
		FROM dalv_streams ORDER BY num`)
	st := &streams{byShard: make(map[int64]int)}
	var (
		num   int
		name  string
		shard int64
	)
	_, err := pgx.ForEachRow(rows, []any{&num, &name, &shard}, func() error {
		if num != len(st.names) {
			return fmt.Errorf("stream %q has number %d, want %d: %w", name, num, len(st.names), store.ErrCorruption)
		}
		if _, dup := st.byShard[shard]; dup {
			return fmt.Errorf("two streams of shard %d: %w", shard, store.ErrCorruption)
		}
		st.names = append(st.names, name)
		st.byShard[shard] = num
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the feed's streams: %w", err)
	}
	var shards int
	err = pool.QueryRow(ctx, "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'dalv_heads'::regclass").Scan(&shards)
	if err != nil {
		return nil, fmt.Errorf("count shards: %w", err)
	}
	if shards != len(st.names) {
		return nil, fmt.Errorf("dalv_heads has %d shards and the feed %d streams: DalvDB's tables must keep the shards they were created with (a shard split is not supported)", shards, len(st.names))
	}
	return st, nil
}

// ofShard returns the stream of shard, in which part is: the one a
// partition's first commit names.
func (st *streams) ofShard(part string, shard int64) (string, error) {
	num, ok := st.byShard[shard]
	if !ok {
		return "", fmt.Errorf("partition %s is in shard %d, which has no feed stream (was the table's shard split?): %w", part, shard, store.ErrCorruption)
	}
	return st.names[num], nil
}

// An Update's first statements on Citus, sent together: the shard of the
// partition (for a partition's first commit, which names its stream), the
// head, locked, and the reads ahead.
//
// The head is locked by an upsert, as on PostgreSQL without Citus: a
// partition's first Update creates the row (version 0, no stream yet), so
// it holds the lock as every later one does, and a second first Update
// waits for it. The head is locked by a write, not by SELECT ... FOR
// UPDATE, for a reason of Citus's too: Citus takes its lock on the shard's
// placement metadata only for a statement that writes, and holds it to the
// transaction's end. A shard move waits for that lock before it switches
// the shard to its new worker, so it waits for the commit to finish. A
// transaction that had only read the shard before a move could write to
// the old worker after it, and that write would be lost with the old
// placement.
const (
	citusShardOf  = `SELECT get_shard_id_for_distribution_column('dalv_heads', $1::text)`
	citusLockHead = `INSERT INTO dalv_heads AS h (part, version, horizon, compactions, stream) VALUES ($1, 0, 0, 0, '')
	ON CONFLICT (part) DO UPDATE SET version = h.version
	RETURNING h.version, h.horizon, h.compactions, h.stream`
	// citusLockHeadOnly is lockHeadOnly on Citus, for the same reason.
	citusLockHeadOnly = `UPDATE dalv_heads SET version = version WHERE part = $1`
)

// A commit's statements on Citus, each routed to the partition's shard.
const (
	citusUpdateHead = `UPDATE dalv_heads SET version = $2, horizon = $3, stream = $4 WHERE part = $1`
	citusDevice     = insertDevices + `VALUES ($1, $2, $3)` + onDevice
	citusKey        = `INSERT INTO dalv_idempotency_keys (part, key, version, digest, nanos) VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT (part, key) DO UPDATE SET version = EXCLUDED.version, digest = EXCLUDED.digest, nanos = EXCLUDED.nanos`
	citusEraseFeed = `DELETE FROM dalv_feed WHERE stream = $1 AND part = $2`
	// citusNextSeq and citusInsertFeed number the commit in its stream and
	// write its feed row: the last writes, so the stream's lock is held
	// for as short a time as can be. The INSERT ... SELECT reads the
	// colocated stream row, so Citus runs it on the shard.
	citusNextSeq    = `UPDATE dalv_streams SET seq = seq + 1 WHERE stream = $1`
	citusInsertFeed = `INSERT INTO dalv_feed (stream, seq, num, part, version, nanos, erase, ops)
	SELECT stream, seq, num, $2, $3, $4, $5, $6 FROM dalv_streams WHERE stream = $1`
)

// citusEntryRows is how many entries one INSERT writes: four parameters
// each, well within PostgreSQL's 65,535.
const citusEntryRows = 1000

// citusEntrySQL holds the INSERT of n entries, by n, as built.
var citusEntrySQL sync.Map

// citusInsertEntries returns the INSERT of n entries of one partition and
// version: $1 the partition, $2 the version, then each entry's key,
// scalar version, value and tombstone time. It is a list of VALUES, which
// Citus routes to the shard, where an INSERT ... SELECT from unnest would
// go through the coordinator.
func citusInsertEntries(n int) string {
	if sql, ok := citusEntrySQL.Load(n); ok {
		return sql.(string)
	}
	var b strings.Builder
	b.WriteString(insertEntries + "VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		p := 3 + 4*i
		fmt.Fprintf(&b, "($1, $%d, $2, $%d, $%d, $%d)", p, p+1, p+2, p+3)
	}
	b.WriteString(onEntry)
	sql := b.String()
	citusEntrySQL.Store(n, sql)
	return sql
}

// citusHead is a partition's head as an Update on Citus locked it.
type citusHead struct {
	store.Head
	compactions int64
	stream      string // the stream of the partition's shard
}

// queueLock queues into b an Update's first statements on Citus, which
// fill h in.
func (s *Store) queueLock(b *pgx.Batch, part string, h *citusHead) {
	var shard int64
	b.Queue(citusShardOf, part).QueryRow(func(row pgx.Row) error { return row.Scan(&shard) })
	b.Queue(citusLockHead, part).QueryRow(func(row pgx.Row) error {
		var v, hz int64
		if err := row.Scan(&v, &hz, &h.compactions, &h.stream); err != nil {
			return err
		}
		h.Head = store.Head{Version: uint64(v), Horizon: uint64(hz)}
		if h.stream != "" {
			return nil
		}
		var err error
		h.stream, err = s.streams.ofShard(part, shard)
		return err
	})
}

// citusCommitBatch checks c against h and returns the statements that write
// it in an Update's transaction on Citus.
func citusCommitBatch(part string, h *citusHead, c *store.Commit) (*pgx.Batch, error) {
	row, err := newCommitRow(part, h.Head, c)
	if err != nil {
		return nil, err
	}
	b := &pgx.Batch{}
	horizon := int64(h.Horizon)
	if c.Erase {
		horizon = row.version
		b.Queue(eraseEntries, part)
		b.Queue(citusEraseFeed, h.stream, part)
	}
	b.Queue(citusUpdateHead, part, row.version, horizon, h.stream)
	if row.device != nil {
		b.Queue(citusDevice, part, row.device, row.batch)
	}
	if row.idemKey != nil {
		digest := c.KeyDigest
		if digest == nil {
			digest = []byte{}
		}
		b.Queue(citusKey, part, row.idemKey, row.version, digest, row.nanos)
	}
	for start := 0; start < len(row.keys); start += citusEntryRows {
		end := min(start+citusEntryRows, len(row.keys))
		args := make([]any, 0, 2+4*(end-start))
		args = append(args, part, row.version)
		for i := start; i < end; i++ {
			var tomb *int64
			if row.dels[i] {
				tomb = &row.nanos
			}
			args = append(args, row.keys[i], row.svs[i], row.vals[i], tomb)
		}
		b.Queue(citusInsertEntries(end-start), args...)
	}
	b.Queue(citusNextSeq, h.stream)
	b.Queue(citusInsertFeed, h.stream, part, row.version, row.nanos, c.Erase, row.ops)
	return b, nil
}

// A position on Citus is one sequence number per stream, in stream order:
// each the last record of that stream read. It is the count of streams,
// then each number, as unsigned varints; the zero position is the empty
// string.
func (st *streams) encodePos(seqs []int64) store.FeedPos {
	zero := true
	for _, n := range seqs {
		zero = zero && n == 0
	}
	if zero {
		return ""
	}
	b := binary.AppendUvarint(make([]byte, 0, 1+3*len(seqs)), uint64(len(seqs)))
	for _, n := range seqs {
		b = binary.AppendUvarint(b, uint64(n))
	}
	return store.FeedPos(b)
}

// decodePos is the inverse of encodePos; it fails with an error wrapping
// store.ErrInvalidPos for bytes no position of these streams encodes.
func (st *streams) decodePos(pos store.FeedPos) ([]int64, error) {
	seqs := make([]int64, len(st.names))
	if pos == "" {
		return seqs, nil
	}
	b := []byte(pos)
	n, k := binary.Uvarint(b)
	if k <= 0 || n != uint64(len(seqs)) {
		return nil, fmt.Errorf("feed position %x: not a position of %d streams: %w", string(pos), len(seqs), store.ErrInvalidPos)
	}
	b = b[k:]
	for i := range seqs {
		v, k := binary.Uvarint(b)
		if k <= 0 || v > 1<<62 {
			return nil, fmt.Errorf("feed position %x: %w", string(pos), store.ErrInvalidPos)
		}
		seqs[i], b = int64(v), b[k:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("feed position %x: trailing bytes: %w", string(pos), store.ErrInvalidPos)
	}
	return seqs, nil
}

// The feed's statements on Citus. citusFeedPage reads, on each shard, its
// stream's records after the reader's number for it ($1, by stream number
// from 1), up to $2 of them, and returns the first $2 in (stream, seq)
// order; citusStreamsRead reads every stream's last number and floor.
// Each is one query per shard, run on its worker.
const (
	citusFeedPage = `SELECT f.num, f.seq, f.part, f.version, f.nanos, f.erase, f.ops
	FROM dalv_streams s CROSS JOIN LATERAL (
		SELECT num, seq, part, version, nanos, erase, ops FROM dalv_feed f
		WHERE f.stream = s.stream AND f.seq > ($1::bigint[])[s.num + 1]
		ORDER BY f.seq LIMIT $2) f
	ORDER BY f.num, f.seq LIMIT $2`
	citusStreamsRead = `SELECT num, seq, floor FROM dalv_streams`
)

// citusFeed is Feed on Citus. Each page reads the records after the
// reader's position in every stream, then the streams' floors: a floor
// above the position (retention dropped records the reader had not read)
// fails with ErrCompacted. Reading the floors after the records makes the
// check safe: retention that ran before the records were read raised a
// floor that the check sees.
func (s *Store) citusFeed(ctx context.Context, after store.FeedPos, fn func(store.FeedRecord) (bool, error)) error {
	seqs, err := s.streams.decodePos(after)
	if err != nil {
		return err
	}
	limit := minFeedPage
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var (
			rows []citusFeedRow
			size int
		)
		b := &pgx.Batch{}
		b.Queue(citusFeedPage, seqs, limit).Query(func(rs pgx.Rows) error {
			for rs.Next() {
				var r citusFeedRow
				if err := rs.Scan(&r.num, &r.seq, &r.part, &r.version, &r.nanos, &r.erase, &r.ops); err != nil {
					return err
				}
				rows = append(rows, r)
				size += len(r.ops) + len(r.part) + 40
			}
			return nil
		})
		var floors []int64
		b.Queue(citusStreamsRead).Query(func(rs pgx.Rows) error {
			floors = make([]int64, len(seqs))
			for rs.Next() {
				var num int
				var seq, floor int64
				if err := rs.Scan(&num, &seq, &floor); err != nil {
					return err
				}
				if num < 0 || num >= len(floors) {
					return fmt.Errorf("stream number %d of %d: %w", num, len(floors), store.ErrCorruption)
				}
				floors[num] = floor
			}
			return nil
		})
		if err := s.sendBatch(ctx, b); err != nil {
			return fmt.Errorf("read feed: %w", err)
		}
		for i, f := range floors {
			if seqs[i] < f {
				return fmt.Errorf("read feed after %x: stream %d at %d, below its horizon %d: %w", string(after), i, seqs[i], f, store.ErrCompacted)
			}
		}
		for _, r := range rows {
			if err := ctx.Err(); err != nil {
				return err
			}
			if r.num < 0 || r.num >= len(seqs) || r.seq <= seqs[r.num] {
				return fmt.Errorf("read feed: record %d of stream %d after %d: %w", r.seq, r.num, seqs[r.num], store.ErrCorruption)
			}
			p, err := parsePartID(r.part)
			if err != nil {
				return fmt.Errorf("read feed: %w", err)
			}
			seqs[r.num] = r.seq
			more, err := fn(store.FeedRecord{
				Pos:       s.streams.encodePos(seqs),
				Partition: p,
				Version:   uint64(r.version),
				Time:      time.Unix(0, r.nanos),
				Erase:     r.erase,
				Ops:       r.ops,
			})
			if err != nil || !more {
				return err
			}
		}
		if len(rows) < limit {
			return ctx.Err()
		}
		limit = min(max(nextLimit(limit, size), minFeedPage), maxFeedPage)
	}
}

// citusFeedRow is one row of citusFeedPage.
type citusFeedRow struct {
	num            int
	seq            int64
	part           string
	version, nanos int64
	erase          bool
	ops            []byte
}

// citusFeedBounds is FeedBounds on Citus: the streams' floors, and their
// last numbers.
func (s *Store) citusFeedBounds(ctx context.Context) (horizon, last store.FeedPos, err error) {
	n := len(s.streams.names)
	floors, seqs := make([]int64, n), make([]int64, n)
	b := &pgx.Batch{}
	b.Queue(citusStreamsRead).Query(func(rs pgx.Rows) error {
		for rs.Next() {
			var num int
			var seq, floor int64
			if err := rs.Scan(&num, &seq, &floor); err != nil {
				return err
			}
			if num < 0 || num >= n {
				return fmt.Errorf("stream number %d of %d: %w", num, n, store.ErrCorruption)
			}
			seqs[num], floors[num] = seq, floor
		}
		return nil
	})
	if err := s.sendBatch(ctx, b); err != nil {
		return "", "", fmt.Errorf("feed bounds: %w", err)
	}
	return s.streams.encodePos(floors), s.streams.encodePos(seqs), nil
}

// Compaction's statements on Citus: each lists partitions (citusKeyParts,
// a read of every shard) or writes one shard.
const (
	// citusDropTombs drops a partition's old tombstones, returning their
	// versions; citusCountCompaction then raises the horizon and counts
	// the compaction on its head.
	citusDropTombs       = `DELETE FROM dalv_entries WHERE part = $1 AND tomb_nanos < $2 RETURNING version`
	citusCountCompaction = `UPDATE dalv_heads SET horizon = GREATEST(horizon, $2), compactions = compactions + 1 WHERE part = $1`
	citusKeyParts        = `SELECT DISTINCT part FROM dalv_idempotency_keys
		WHERE nanos < $1 AND part > $2 ORDER BY part LIMIT $3`
	citusDropKeys   = `DELETE FROM dalv_idempotency_keys WHERE part = $1 AND nanos < $2`
	citusOldFeed    = `SELECT seq, nanos FROM dalv_feed WHERE stream = $1 ORDER BY seq LIMIT $2`
	citusDropFeed   = `DELETE FROM dalv_feed WHERE stream = $1 AND seq <= $2`
	citusRaiseFloor = `UPDATE dalv_streams SET floor = GREATEST(floor, $2) WHERE stream = $1`
	citusDiskBytes  = `SELECT COALESCE(sum(citus_total_relation_size(p.logicalrelid)), 0)::bigint
		FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid JOIN pg_namespace ns ON ns.oid = c.relnamespace
		WHERE ns.nspname = current_schema() AND c.relname LIKE 'dalv\_%'`
)

// citusCompactPartition drops part's tombstones older than cut in one
// transaction, under the head's lock, and returns how many it dropped.
func (s *Store) citusCompactPartition(ctx context.Context, part string, cut int64) (int, error) {
	var (
		n   int
		top int64
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, citusLockHeadOnly, part); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, citusDropTombs, part, cut)
		var v int64
		if _, err := pgx.ForEachRow(rows, []any{&v}, func() error {
			n, top = n+1, max(top, v)
			return nil
		}); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		_, err := tx.Exec(ctx, citusCountCompaction, part, top)
		return err
	})
	return n, err
}

// citusCompactRest is Compact on Citus after the tombstones: the old
// idempotency key rows, partition by partition (a statement of every shard
// would be a two-phase commit across the workers), then the old records of
// each stream.
func (s *Store) citusCompactRest(ctx context.Context, cut int64, st store.CompactStats) (store.CompactStats, error) {
	err := s.eachPart(ctx, citusKeyParts, cut, func(part string) error {
		b := &pgx.Batch{}
		b.Queue(citusDropKeys, part, cut).Exec(func(tag pgconn.CommandTag) error {
			st.Keys += int(tag.RowsAffected())
			return nil
		})
		if err := s.sendBatch(ctx, b); err != nil {
			return fmt.Errorf("compact idempotency keys of %s: %w", part, err)
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	n, err := s.citusCompactFeed(ctx, cut)
	st.FeedRecords = n
	if err != nil {
		return st, fmt.Errorf("compact feed: %w", err)
	}
	return st, nil
}

// citusCompactFeed drops the oldest records of each stream while they were
// made before cut, raising the stream's floor, a stream and a chunk at a
// time: each chunk one transaction on the stream's worker.
func (s *Store) citusCompactFeed(ctx context.Context, cut int64) (int, error) {
	dropped := 0
	for _, stream := range s.streams.names {
		for {
			if s.gate.Closing() {
				return dropped, store.ErrClosed
			}
			n, more := 0, false
			err := s.inTx(ctx, func(tx pgx.Tx) error {
				rows, _ := tx.Query(ctx, citusOldFeed, stream, compactFeed)
				var (
					seq, nanos, last int64
					read             int
					old              = true
				)
				if _, err := pgx.ForEachRow(rows, []any{&seq, &nanos}, func() error {
					read++
					if old = old && nanos < cut; old {
						last = seq
					}
					return nil
				}); err != nil {
					return err
				}
				if last == 0 {
					return nil
				}
				more = old && read == compactFeed
				tag, err := tx.Exec(ctx, citusDropFeed, stream, last)
				if err != nil {
					return err
				}
				n = int(tag.RowsAffected())
				_, err = tx.Exec(ctx, citusRaiseFloor, stream, last)
				return err
			})
			dropped += n
			if err != nil {
				return dropped, fmt.Errorf("stream %s: %w", stream, err)
			}
			if !more {
				break
			}
		}
	}
	return dropped, nil
}

// inTx runs fn in a transaction on a pooled connection, as one operation
// (see opContext).
func (s *Store) inTx(caller context.Context, fn func(tx pgx.Tx) error) error {
	ctx, stop := s.opContext(caller)
	defer stop()
	conn, err := s.acquire(caller, ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if err := pgx.BeginFunc(ctx, conn, fn); err != nil {
		return connErr(ctx, conn, err)
	}
	return nil
}

// A commit on Citus usually takes one call to the partition's worker, and
// at most two. The store holds the state of small partitions it commits to
// (cache.go), with their stream; when it holds none, one statement reads
// the head and the reads ahead. Once fn has decided on that state, one
// call of dalv_commit (migrations/citus) writes the commit if the head has
// not moved, in a transaction of the worker's own: Citus runs the function
// on the worker that holds the partition's shard, so its statements run
// there. An Update's transaction takes eight calls, as Citus sends each
// statement to the worker on its own.
//
// As on a held state (held.go), only a commit goes this way: fn's answers
// that commit nothing, and commits that erase or record an idempotency key,
// or that need reads beyond those ahead, take the transaction's way, and so
// does a commit whose head moved meanwhile (after a second try from a
// fresh read when the state was held).
const (
	citusReadHead = `SELECT version, horizon, compactions, stream FROM dalv_heads WHERE part = $1`
	citusCommit   = `SELECT dalv_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`
)

// citusDirect makes an Update's attempt in one or two calls (see
// citusCommit). done is false when the Update must run as a transaction
// instead; otherwise err is the Update's outcome, and version what it
// committed.
func (s *Store) citusDirect(ctx context.Context, p store.Partition, part string,
	fn func(r store.Reader) (*store.Commit, error)) (version uint64, done bool, err error) {
	if s.hooks.noReadAhead || s.hooks.beforeLock != nil || s.hooks.beforeCommit != nil {
		return 0, false, nil
	}
	st := s.held.states.get(part)
	for held := st != nil; ; held = false {
		if !held {
			if st, err = s.citusRead(ctx, p, part); err != nil {
				return 0, true, err
			}
		}
		c, row, done, err := commitOnState(ctx, p, part, &heldReader{p: p, st: st}, fn)
		if c == nil {
			return 0, done, err
		}
		var committed bool
		b := &pgx.Batch{}
		b.Queue(citusCommit, part, int64(st.head.Version), int64(st.head.Horizon), st.compactions, st.stream, row.version,
			row.device, row.batch, row.nanos, row.keys, row.svs, row.vals, row.dels, row.ops).
			QueryRow(func(r pgx.Row) error { return r.Scan(&committed) })
		if err := s.sendBatch(ctx, b); err != nil {
			s.held.states.hold(part, nil)
			// The call is its own transaction: lost while in flight, it
			// may or may not have committed.
			err = fmt.Errorf("commit %s version %d: %w", p, c.Version, err)
			if errors.Is(err, store.ErrUnavailable) {
				err = fmt.Errorf("%w: %w", errUnknownOutcome, err)
			}
			return 0, true, err
		}
		if committed {
			s.calls.Add(1)
			s.held.states.hold(part, st.after(c))
			return c.Version, true, nil
		}
		s.held.moved.Add(1)
		s.held.states.hold(part, nil)
		if !held {
			return 0, false, nil
		}
	}
}

// citusRead reads part's head and the reads ahead, as a state to commit
// on. The head is read first, in a statement of its own: a commit between
// the two reads moves the head past the one read, so the commit on this
// state finds it moved and writes nothing.
func (s *Store) citusRead(ctx context.Context, p store.Partition, part string) (*partState, error) {
	var (
		shard int64
		st    = &partState{pf: &prefetch{}}
		v, hz int64
	)
	b := &pgx.Batch{}
	b.Queue(citusShardOf, part).QueryRow(func(row pgx.Row) error { return row.Scan(&shard) })
	b.Queue(citusReadHead, part).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			if err := rows.Scan(&v, &hz, &st.compactions, &st.stream); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	st.pf.queueAll(b, part, s.held.states.readAheadRows(part))
	if err := s.sendBatch(ctx, b); err != nil {
		return nil, fmt.Errorf("update %s: read: %w", p, err)
	}
	s.held.states.markTooBig(part, st.pf)
	st.head = store.Head{Version: uint64(v), Horizon: uint64(hz)}
	if st.stream == "" {
		var err error
		if st.stream, err = s.streams.ofShard(part, shard); err != nil {
			return nil, err
		}
	}
	return st, nil
}
