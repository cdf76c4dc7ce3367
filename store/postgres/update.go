package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dalvdb/dalv/store"
)

// maxAttempts bounds the tries of one Update: deadlocks, serialisation
// failures and connections lost before COMMIT was sent are retried.
const maxAttempts = 5

// lockHead is an Update's first statement: it creates or locks the
// partition's head row, and writes the head as the commit will leave it:
// the next version, and the commit's feed key (see nextFeedKey). (An Update
// that commits nothing rolls it back.) It returns the head as it was, its
// compactions, the feed key, and the transaction's id.
var lockHead = `INSERT INTO dalv_heads AS h (part, version, horizon, feed_key)
VALUES ($1, 1, 0, ` + xactID + `)
ON CONFLICT (part) DO UPDATE SET version = h.version + 1, feed_key = ` + nextFeedKey("h") + `
RETURNING h.version - 1, h.horizon, h.compactions, h.feed_key, ` + xactID

// writeCommit writes a commit in one statement: the device's batch, the
// idempotency key's record, the entries, and the feed row. Its parameters
// are a commitRow's fields in order, then whether it erases, the feed key,
// the idempotency key (NULL for none) and its digest. (The head was written by
// lockHead; an erase also moves the horizon, by eraseHorizon.)
var writeCommit = `WITH d AS (
	` + insertDevices + `SELECT $1, $3::bytea, $4 WHERE $3::bytea IS NOT NULL` + onDevice + `
), k AS (
	INSERT INTO dalv_idempotency_keys (part, key, version, digest, nanos)
	SELECT $1, $13::bytea, $2, COALESCE($14::bytea, '\x'::bytea), $6 WHERE $13::bytea IS NOT NULL
	ON CONFLICT (part, key) DO UPDATE SET version = EXCLUDED.version, digest = EXCLUDED.digest, nanos = EXCLUDED.nanos
), e AS (
	` + insertEntries + `SELECT $1, t.k, $2, t.sv, ` + entryValue + `, ` + entryTomb("$6::bigint") + `
	FROM unnest($7::bytea[], $8::bigint[], $9::bytea[], $10::boolean[]) AS t(k, sv, v, del)` + onEntry + `
)
` + insertFeed + `VALUES ($1, $12, $2, $6, $11, $5)`

// Erasing deletes the partition's entries and its earlier feed rows, before
// the commit's own writes.
const (
	eraseEntries = `DELETE FROM dalv_entries WHERE part = $1`
	eraseFeed    = `DELETE FROM dalv_feed WHERE part = $1 AND feed_key < $2`
	eraseHorizon = `UPDATE dalv_heads SET horizon = $2 WHERE part = $1`
)

// errUnknownOutcome marks a commit whose COMMIT was sent but not answered.
var errUnknownOutcome = errors.New("connection lost while committing: the commit may or may not have been applied")

// Update implements [store.Store]. fn may be called more than once: again
// after a deadlock, a serialisation failure, or a connection lost before
// the commit was sent.
func (s *Store) Update(ctx context.Context, p store.Partition, fn func(r store.Reader) (*store.Commit, error)) error {
	if err := s.gate.EnterPartition(ctx, p); err != nil {
		return err
	}
	defer s.gate.Exit()
	if err := s.Healthy(); err != nil {
		return err
	}
	part := partID(p)
	// The commit fn made last is the one committed: its entries go along
	// with the announcement.
	var made *store.Commit
	decide := fn
	fn = func(r store.Reader) (*store.Commit, error) {
		c, err := decide(r)
		made = c
		return c, err
	}
	direct := s.held.update
	if s.streams != nil {
		direct = s.citusDirect
	}
	if version, done, err := direct(ctx, p, part, fn); done {
		if err == nil && version != 0 {
			s.ann.add(part, version, made)
		}
		return err
	}
	s.held.states.txBegins(part)
	defer s.held.states.txEnds(part)
	for attempt := 1; ; attempt++ {
		version, retry, err := s.update(ctx, p, part, fn)
		if err == nil {
			if version != 0 {
				s.ann.add(part, version, made)
			}
			return nil
		}
		if !retry || attempt == maxAttempts || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * time.Millisecond):
		}
	}
}

// update makes one attempt at an Update. It returns the version committed
// (0 for none), and whether a failure may be retried: only when the
// transaction certainly did not commit.
func (s *Store) update(ctx context.Context, p store.Partition, part string, fn func(r store.Reader) (*store.Commit, error)) (version uint64, retry bool, err error) {
	octx, stop := s.opContext(ctx)
	defer stop()
	conn, err := s.acquire(ctx, octx)
	if err != nil {
		return 0, false, fmt.Errorf("update %s: %w", p, err)
	}
	defer conn.Release() // a connection left in a transaction is destroyed
	// failed classes a failure before COMMIT was sent: nothing committed.
	failed := func(err error) (uint64, bool, error) {
		s.rollback(conn)
		code := sqlState(err)
		retry := code == "40001" || code == "40P01" || conn.Conn().IsClosed() && octx.Err() == nil
		return 0, retry, connErr(octx, conn, err)
	}

	var (
		h, hz, compactions, feedKey, xid int64
		ch                               citusHead // the head, on Citus
		pf                               *prefetch // the reads ahead, sent with the lock
	)
	lock := func(b *pgx.Batch) {
		if s.streams != nil {
			s.queueLock(b, part, &ch)
			return
		}
		b.Queue(lockHead, part).QueryRow(func(row pgx.Row) error { return row.Scan(&h, &hz, &compactions, &feedKey, &xid) })
	}
	if s.hooks.beforeLock != nil {
		if err := s.hookBeforeLock(octx, conn); err != nil {
			return failed(err)
		}
		b := &pgx.Batch{}
		lock(b)
		err = conn.SendBatch(octx, b).Close()
	} else {
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		lock(b)
		if !s.hooks.noReadAhead {
			pf = &prefetch{}
			pf.queueAll(b, part, s.held.states.readAheadRows(part))
		}
		err = conn.SendBatch(octx, b).Close()
	}
	if err != nil {
		_, retry, err := failed(err)
		return 0, retry, fmt.Errorf("update %s: lock head: %w", p, err)
	}
	head := store.Head{Version: uint64(h), Horizon: uint64(hz)}
	if s.streams != nil {
		head, compactions = ch.Head, ch.compactions
	}
	r := &reader{ctx: octx, caller: ctx, conn: conn, p: p, part: part, headRead: true, head: head, pf: pf}
	c, err := fn(r)
	if err == nil && c == nil && s.streams == nil {
		err = endAnswer(octx, conn)
	}
	if err != nil || c == nil {
		_, retry, _ := failed(err)
		if st := newState(head, compactions, pf); err == nil && st != nil {
			st.stream = ch.stream
			s.held.states.hold(part, st) // nothing changed
		}
		s.held.states.markTooBig(part, pf)
		return 0, retry && errors.Is(err, store.ErrUnavailable), err
	}
	if err := ctx.Err(); err != nil {
		s.rollback(conn)
		return 0, false, err
	}
	var b *pgx.Batch
	if s.streams != nil {
		b, err = citusCommitBatch(part, &ch, c)
	} else {
		b, err = commitBatch(part, head, feedKey, c)
	}
	if err != nil {
		s.rollback(conn)
		return 0, false, fmt.Errorf("commit %s version %d: %w", p, c.Version, err)
	}
	hook := s.hooks.beforeCommit
	if hook == nil {
		b.Queue("COMMIT")
	}
	if err := conn.SendBatch(octx, b).Close(); err != nil {
		if conn.Conn().IsClosed() && hook == nil {
			return 0, false, fmt.Errorf("commit %s version %d: %w: %w", p, c.Version, errUnknownOutcome, connErr(octx, conn, err))
		}
		_, retry, err := failed(err)
		return 0, retry, fmt.Errorf("commit %s version %d: %w", p, c.Version, err)
	}
	if hook != nil {
		hook(p, feedKey)
		if _, err := conn.Exec(octx, "COMMIT"); err != nil {
			return 0, false, fmt.Errorf("commit %s version %d: %w: %w", p, c.Version, errUnknownOutcome, connErr(octx, conn, err))
		}
	}
	if err := s.confirmCommit(octx, conn); err != nil {
		return 0, false, fmt.Errorf("commit %s version %d: %w: %w", p, c.Version, errUnknownOutcome, err)
	}
	s.transactions.Add(1)
	s.held.states.markTooBig(part, pf)
	st := newState(head, compactions, pf)
	if s.streams == nil && pf != nil {
		st = afterCommit(st, head, compactions, c)
	} else if st = st.after(c); st != nil {
		st.stream = ch.stream
	}
	s.held.states.hold(part, st)
	if s.streams == nil {
		passFeedKey(octx, conn, feedKey, xid)
	}
	return c.Version, false, nil
}

// passFeedKey makes sure readers of the feed get past a commit's feed key
// when it is above the commit's transaction id (the partition's previous
// commit had a later one): they pass it once the oldest running id is above
// it, so it takes an id, and an idle database gets there too.
func passFeedKey(ctx context.Context, conn *pgxpool.Conn, feedKey, xid int64) {
	if feedKey > xid {
		_, _ = conn.Exec(ctx, "SELECT pg_current_xact_id()")
	}
}

// hookBeforeLock begins a transaction on conn and runs the test hook
// beforeLock in it, if set.
func (s *Store) hookBeforeLock(ctx context.Context, conn *pgxpool.Conn) error {
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if s.hooks.beforeLock == nil {
		return nil
	}
	return s.hooks.beforeLock(ctx, conn.Conn())
}

// rollback ends conn's transaction, if it still has one.
func (s *Store) rollback(conn *pgxpool.Conn) {
	if conn.Conn().IsClosed() || conn.Conn().PgConn().TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		_ = conn.Conn().Close(ctx)
	}
}

// commitBatch checks c against head and returns the statements that write
// it in an Update's transaction.
func commitBatch(part string, head store.Head, feedKey int64, c *store.Commit) (*pgx.Batch, error) {
	row, err := newCommitRow(part, head, c)
	if err != nil {
		return nil, err
	}
	b := &pgx.Batch{}
	if c.Erase {
		b.Queue(eraseEntries, part)
		b.Queue(eraseFeed, part, feedKey)
		b.Queue(eraseHorizon, part, int64(c.Version))
	}
	b.Queue(writeCommit, row.part, row.version, row.device, row.batch, row.ops, row.nanos,
		row.keys, row.svs, row.vals, row.dels, c.Erase, feedKey, row.idemKey, c.KeyDigest)
	return b, nil
}

// commitRow is a commit as the statements that write it take it.
type commitRow struct {
	part       string
	version    int64
	device     []byte // nil for a backend's commit
	idemKey    []byte // nil for none
	batch      int64
	ops        []byte
	nanos      int64
	keys, vals [][]byte // a deleted entry's value is nil
	svs        []int64
	dels       []bool
	size       int // about the bytes it sends
}

// newCommitRow checks c against head and returns it as a row: the
// partition, the version, the device and its batch, the ops, the time, and
// the entries' keys, scalar versions, values and deletions.
func newCommitRow(part string, head store.Head, c *store.Commit) (*commitRow, error) {
	if err := c.Check(head); err != nil {
		return nil, err
	}
	if c.Version > math.MaxInt64 {
		return nil, errors.New("version out of range")
	}
	if c.Batch > math.MaxInt64 {
		return nil, errors.New("batch out of range")
	}
	// The last entry of a key wins, as it does in a batch of writes.
	n := len(c.Entries)
	r := &commitRow{part: part, version: int64(c.Version), batch: int64(c.Batch), ops: c.Ops,
		nanos: max(c.Time.UnixNano(), 0), keys: make([][]byte, 0, n), svs: make([]int64, 0, n),
		vals: make([][]byte, 0, n), dels: make([]bool, 0, n)}
	if c.Device != "" {
		r.device = []byte(c.Device)
	}
	if c.IdempotencyKey != "" {
		r.idemKey = []byte(c.IdempotencyKey)
	}
	if r.ops == nil {
		r.ops = []byte{}
	}
	r.size = len(part) + len(r.device) + len(r.ops) + 64
	var seen map[string]int
	if n > 1 {
		seen = make(map[string]int, n)
	}
	for i := range c.Entries {
		e := &c.Entries[i]
		if e.ScalarVersion > math.MaxInt64 {
			return nil, fmt.Errorf("entry %q: scalar version out of range", e.Key)
		}
		val := e.Value
		if e.Deleted {
			val = nil
		} else if val == nil {
			val = []byte{}
		}
		r.size += len(e.Key) + len(val) + 32
		if j, dup := seen[e.Key]; dup {
			r.svs[j], r.vals[j], r.dels[j] = int64(e.ScalarVersion), val, e.Deleted
			continue
		}
		if seen != nil {
			seen[e.Key] = len(r.keys)
		}
		r.keys = append(r.keys, []byte(e.Key))
		r.svs = append(r.svs, int64(e.ScalarVersion))
		r.vals = append(r.vals, val)
		r.dels = append(r.dels, e.Deleted)
	}
	return r, nil
}
