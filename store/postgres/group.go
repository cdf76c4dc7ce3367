package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dalvdb/dalv/store"
)

// Commits on held states are written in groups. While a statement of them
// is in flight, the commits that arrive wait, and the next statement writes
// all of them: one round trip, one transaction and one WAL flush for many
// syncs, where each would take its own. Each commit in a statement is
// conditional on its own partition's head, as a lone one would be: one
// whose head moved on, or is locked by another process's commit, writes
// nothing, and the others do not notice. A statement never waits for a
// lock, so one partition's contention does not hold up the rest. A commit
// waits for no timer, only for the statement in flight, so under a light
// load every statement holds one commit. The reads of what sparse states
// lack go in groups the same way (see sparse.go).
const (
	// groupCommits and groupBytes bound one statement.
	groupCommits = 64
	groupBytes   = 1 << 20
)

// A batcher hands the items it is given to run in batches, one batch in
// flight at a time: the items that arrive while one is run wait, and go in
// the next, up to groupCommits items and groupBytes (by size). One batch in
// flight gives the largest groups, and so the least CPU per item, on the
// nodes and in PostgreSQL: a second in flight would take the items that now
// wait for the first, and cost more than they would save in waiting.
type batcher[T any] struct {
	size  func(T) int     // an item's bytes
	run   func(batch []T) // runs a batch: each item's caller learns its outcome
	limit int             // the items of a batch, groupCommits when 0

	mu      sync.Mutex
	queue   []T
	running bool
}

// add queues item. With no batch in flight, the caller runs the batch that
// holds it, and the batches after it run in goroutines of their own: the
// caller has a sync to answer.
func (b *batcher[T]) add(item T) {
	b.mu.Lock()
	b.queue = append(b.queue, item)
	if b.running {
		b.mu.Unlock()
		return
	}
	b.running = true
	batch := b.takeLocked()
	b.mu.Unlock()
	b.loop(batch)
}

// loop runs batch, then the next one if items queued meanwhile.
func (b *batcher[T]) loop(batch []T) {
	b.run(batch)
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.running = false
		b.mu.Unlock()
		return
	}
	next := b.takeLocked()
	b.mu.Unlock()
	go b.loop(next)
}

// takeLocked takes the next batch off the queue.
func (b *batcher[T]) takeLocked() []T {
	n, size, limit := 0, 0, cmp.Or(b.limit, groupCommits)
	for n < len(b.queue) && n < limit {
		if size += b.size(b.queue[n]); n > 0 && size > groupBytes {
			break
		}
		n++
	}
	batch := make([]T, n)
	copy(batch, b.queue)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}

// writeHeld writes a group of commits on held states, each one only if its
// partition's head is still the state's (version, horizon and compactions),
// and returns the position (from 1) of each commit written, its feed key, and
// the transaction's id. A head another transaction has locked is skipped
// (SKIP LOCKED): that transaction is another commit to the partition (or a
// compaction of it), which the state cannot know of. Its parameters are one array per
// column of the commits, then one per column of their entries, each entry
// naming its commit by position.
var writeHeld = `WITH c AS (
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bigint[], $5::bytea[], $6::bigint[],
		$7::bigint[], $8::bigint[], $9::bigint[]) WITH ORDINALITY
		AS c(part, version, device, batch, ops, nanos, was, horizon, compactions, ix)
), l AS (
	SELECT hd.part FROM dalv_heads hd JOIN c ON hd.part = c.part
	WHERE hd.version = c.was AND hd.horizon = c.horizon AND hd.compactions = c.compactions
	FOR UPDATE OF hd SKIP LOCKED
), h AS (
	UPDATE dalv_heads hd SET version = c.version, feed_key = ` + nextFeedKey("hd") + `
	FROM c
	WHERE hd.part = c.part AND hd.version = c.was AND hd.horizon = c.horizon AND hd.compactions = c.compactions
		AND hd.part IN (SELECT part FROM l)
	RETURNING c.ix, hd.part, hd.version, hd.feed_key, c.device, c.batch, c.ops, c.nanos
), d AS (
	` + insertDevices + `SELECT part, device, batch FROM h WHERE device IS NOT NULL` + onDevice + `
), e AS (
	` + insertEntries + `SELECT h.part, t.k, h.version, t.sv, ` + entryValue + `, ` + entryTomb("h.nanos") + `
	FROM h JOIN unnest($10::bigint[], $11::bytea[], $12::bigint[], $13::bytea[], $14::boolean[]) AS t(ix, k, sv, v, del)
		ON t.ix = h.ix` + onEntry + `
), f AS (
	` + insertFeed + `SELECT part, feed_key, version, nanos, false, ops FROM h
)
SELECT ix, feed_key, ` + xactID + ` FROM h`

// heldCommit is one commit on a held state, as it waits for and then
// learns its group's outcome.
type heldCommit struct {
	p    store.Partition
	st   *partState
	c    *store.Commit
	row  *commitRow
	done chan struct{} // closed when outcome (and err) are set

	outcome heldOutcome
	err     error         // with heldFailed
	after   chan struct{} // with heldBusy: closed when the partition's commit in the group has its outcome
	next    *partState    // with heldMoved: the later state this process committed to, if any
}

// heldOutcome is what became of a held commit.
type heldOutcome int

const (
	heldCommitted heldOutcome = iota
	heldMoved                 // another process committed to the partition: not written
	heldRetry                 // not written: the Update is to run as a transaction
	heldFailed                // failed with err, and may or may not be written
	heldBusy                  // not written: the partition has a commit in the group, which hc rests on the state of
)

// commit writes hc in the next statement and sets its outcome. A commit to a
// partition that has one queued or in flight already is not written
// (heldBusy): both rest on the same state, so it would find the head moved.
func (h *held) commit(hc *heldCommit) {
	hc.done = make(chan struct{})
	h.mu.Lock()
	if first := h.parts[hc.row.part]; first != nil {
		h.mu.Unlock()
		hc.outcome, hc.after = heldBusy, first.done
		return
	}
	h.parts[hc.row.part] = hc
	h.mu.Unlock()
	h.commits.add(hc)
	<-hc.done
}

// runCommits writes batch and hands each commit its outcome.
func (h *held) runCommits(batch []*heldCommit) {
	h.write(batch)
	h.mu.Lock()
	for _, hc := range batch {
		delete(h.parts, hc.row.part)
	}
	h.mu.Unlock()
	for _, hc := range batch {
		close(hc.done)
	}
}

// write writes batch in one statement and sets each commit's outcome, and
// the states the store holds after it. Its statement runs under the store's
// timeout alone: it is no one caller's.
func (h *held) write(batch []*heldCommit) {
	s := h.s
	// A steady order, for PostgreSQL's plan and for the tests.
	slices.SortFunc(batch, func(a, b *heldCommit) int { return strings.Compare(a.row.part, b.row.part) })
	n := len(batch)
	var (
		parts                                          = make([]string, n)
		devices, ops                                   = make([][]byte, n), make([][]byte, n)
		versions, batches, nanos, was, horizons, comps = make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		eix, esv                                       []int64
		ekeys, evals                                   [][]byte
		edels                                          []bool
	)
	for i, hc := range batch {
		r := hc.row
		parts[i], versions[i], devices[i], batches[i], ops[i], nanos[i] = r.part, r.version, r.device, r.batch, r.ops, r.nanos
		was[i], horizons[i], comps[i] = int64(hc.st.head.Version), int64(hc.st.head.Horizon), hc.st.compactions
		for range r.keys {
			eix = append(eix, int64(i+1))
		}
		ekeys, esv, evals, edels = append(ekeys, r.keys...), append(esv, r.svs...), append(evals, r.vals...), append(edels, r.dels...)
	}
	octx, stop := s.opContext(context.Background())
	defer stop()
	conn, err := s.pool.Acquire(octx)
	if err != nil {
		for _, hc := range batch {
			hc.outcome, hc.err = heldFailed, fmt.Errorf("update %s: %w", hc.p, storeErr(octx, err))
		}
		return
	}
	defer conn.Release()
	// A test hook wraps the statement in a transaction of its own, to stop
	// it before it locks or before it commits.
	hooked := s.hooks.beforeLock != nil || s.hooks.beforeCommit != nil
	if hooked {
		if err := s.hookBeforeLock(octx, conn); err != nil {
			s.rollback(conn)
			for _, hc := range batch {
				hc.outcome = heldRetry
			}
			return
		}
	}
	written := make([]bool, n)
	feedKeys := make([]int64, n)
	var lastKey, xid int64
	var readErr error // a row that could not be read: its commit's outcome is unknown
	rows, _ := conn.Query(octx, writeHeld, parts, versions, devices, batches, ops, nanos, was, horizons, comps,
		eix, ekeys, esv, evals, edels)
	for rows.Next() {
		var ix, feedKey int64
		if err := rows.Scan(&ix, &feedKey, &xid); err != nil || ix < 1 || ix > int64(n) {
			readErr = cmp.Or(err, fmt.Errorf("the statement returned commit %d of %d", ix, n))
			continue
		}
		written[ix-1], feedKeys[ix-1] = true, feedKey
		lastKey = max(lastKey, feedKey)
	}
	err = rows.Err()
	if err == nil && hooked {
		for i, hc := range batch {
			if written[i] && s.hooks.beforeCommit != nil {
				s.hooks.beforeCommit(hc.p, feedKeys[i])
			}
		}
		if _, err := conn.Exec(octx, "COMMIT"); err != nil {
			for _, hc := range batch {
				hc.outcome = heldFailed
				hc.err = fmt.Errorf("commit %s version %d: %w: %w", hc.p, hc.c.Version, errUnknownOutcome, connErr(octx, conn, err))
				h.states.hold(hc.row.part, nil)
			}
			return
		}
	}
	if err != nil {
		// Retried as transactions only when certainly not written: not
		// sent, or refused by PostgreSQL on a connection that lives on
		// (the statement's own transaction rolled back). Each transaction
		// then tells its own error.
		outcome := heldFailed
		var pgErr *pgconn.PgError
		if pgconn.SafeToRetry(err) || errors.As(err, &pgErr) && !conn.Conn().IsClosed() {
			outcome = heldRetry
		}
		s.rollback(conn) // a hooked statement's own transaction
		for _, hc := range batch {
			hc.outcome = outcome
			if outcome == heldFailed {
				hc.err = fmt.Errorf("commit %s version %d: %w: %w", hc.p, hc.c.Version, errUnknownOutcome, connErr(octx, conn, err))
			}
			h.states.hold(hc.row.part, nil)
		}
		return
	}
	if err := s.confirmCommit(octx, conn); err != nil {
		for _, hc := range batch {
			hc.outcome = heldFailed
			hc.err = fmt.Errorf("commit %s version %d: %w: %w", hc.p, hc.c.Version, errUnknownOutcome, err)
			h.states.hold(hc.row.part, nil)
		}
		return
	}
	h.statements.Add(1)
	for i, hc := range batch {
		switch {
		case written[i]:
			hc.outcome = heldCommitted
			h.committed.Add(1)
			h.states.hold(hc.row.part, afterCommit(hc.st, hc.st.head, hc.st.compactions, hc.c))
		case readErr != nil:
			hc.outcome = heldFailed
			hc.err = fmt.Errorf("commit %s version %d: %w: %w", hc.p, hc.c.Version, errUnknownOutcome, readErr)
			h.states.hold(hc.row.part, nil)
		default:
			hc.outcome = heldMoved
			h.moved.Add(1)
			// Another process committed (it may take turns with this one,
			// and part cools down), or this one did, as a transaction.
			hc.next = h.states.movedOn(hc.row.part, hc.st)
		}
	}
	passFeedKey(octx, conn, lastKey, xid)
}
