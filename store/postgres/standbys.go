package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dalvdb/dalv/store"
)

// With synchronous standbys, PostgreSQL acknowledges a commit once a
// standby has it, but shows it to other sessions before a standby has it
// when the commit's wait for the standby ends early: its backend was
// cancelled or terminated, or saw the postmaster die (it commits locally as
// it exits). What is read may then be a commit that a promoted standby
// never had, and whose version it gives again to another write. So what
// the store tells from a read waits first until the standbys have all it
// read: a feed page (feed.go), an Update that answers without committing
// (endAnswer), a View (waitStandbys), and a commit that drew a warning
// (confirmCommit). On Citus, nothing waits for the workers' standbys.

const (
	// awaitStandbys, alone or then more conditions, makes its
	// transaction's COMMIT wait for the synchronous standbys, when the
	// server has some: it writes to the WAL (an empty message of logical
	// decoding's, which takes the transaction an id), and a commit that
	// wrote waits until the standbys have its WAL, and so all the WAL
	// before it.
	awaitStandbys = `SELECT pg_logical_emit_message(true, 'dalv', '') WHERE current_setting('synchronous_standby_names') <> ''`

	// hasStandbys asks whether the server has synchronous standbys.
	hasStandbys = `SELECT current_setting('synchronous_standby_names') <> ''`
)

// standbysAskEvery is how often a View asks whether the server has
// synchronous standbys: the others take the last answer. Asking costs a
// View about a tenth of its time; the setting changes seldom, and a View
// that takes an answer up to this old may tell, the moment the setting
// comes on, of a commit whose wait was cancelled then.
const standbysAskEvery = time.Second

// askStandbys reports whether the View about to begin is to ask whether the
// server has synchronous standbys: when no View has for standbysAskEvery.
func (s *Store) askStandbys() bool {
	now, last := s.now().UnixNano(), s.standbysAsked.Load()
	return now-last >= int64(standbysAskEvery) && s.standbysAsked.CompareAndSwap(last, now)
}

// knowStandbys returns whether the server has synchronous standbys, for
// the View of r: its own answer if it asked (kept for the Views that do
// not), else the last answer.
func (s *Store) knowStandbys(r *reader) bool {
	if r.askStandbys && r.begun {
		s.hasStandbys.Store(r.standbys)
		return r.standbys
	}
	return s.hasStandbys.Load()
}

// A standbyWait is a View's wait for the synchronous standbys.
type standbyWait struct {
	done chan struct{} // closed once err is set
	err  error
}

// waitStandbys returns once the synchronous standbys have all the WAL
// written before it was called, and so every commit a transaction that
// ended before then could see. The waits of concurrent callers share one
// statement (awaitStandbys), run on a connection of its own: a wait begun
// while one runs waits for the next.
func (s *Store) waitStandbys(ctx context.Context) error {
	w := &standbyWait{done: make(chan struct{})}
	go s.standbyWaits.add(w) // add may run the batch, which ctx cannot stop
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runStandbyWaits is the batch of waitStandbys' waits.
func (s *Store) runStandbyWaits(batch []*standbyWait) {
	b := &pgx.Batch{}
	b.Queue(awaitStandbys)
	err := s.sendBatch(context.Background(), b)
	if err != nil {
		err = fmt.Errorf("wait for the synchronous standbys: %w", err)
	}
	for _, w := range batch {
		w.err = err
		close(w.done)
	}
}

// endAnswer ends the transaction of an Update that committed nothing, and
// returns once the synchronous standbys have what it read, if the server
// has any (see awaitStandbys). A device that retries a batch whose first
// answer it never got is answered from the partition as it reads it: the
// batch is acknowledged only once the standbys have it.
func endAnswer(ctx context.Context, conn *pgxpool.Conn) error {
	b := &pgx.Batch{}
	b.Queue("ROLLBACK")
	b.Queue(awaitStandbys)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("wait for the synchronous standbys: %w", connErr(ctx, conn, err))
	}
	return nil
}

// warnedKey marks, in a connection's CustomData, that PostgreSQL sent it a
// warning since the mark was last cleared.
const warnedKey = "dalv.warned"

// noteWarning is the connections' notice handler: it marks a connection
// that PostgreSQL sent a warning (see confirmCommit).
func noteWarning(c *pgconn.PgConn, n *pgconn.Notice) {
	if n.SeverityUnlocalized == "WARNING" {
		c.CustomData()[warnedKey] = true
	}
}

// confirmCommit returns once the commit just made on conn is on the
// synchronous standbys, if the server has any. A commit whose wait for
// them was cancelled (pg_cancel_backend, a statement_timeout) succeeds
// with a warning, on the primary alone (see awaitStandbys); so after a
// warning it waits for the standbys with a statement of its own. An error
// leaves the commit's outcome unknown: it is there, and may be lost with
// the primary. On Citus the commit is a worker's, and nothing is waited
// for.
func (s *Store) confirmCommit(ctx context.Context, conn *pgxpool.Conn) error {
	data := conn.Conn().PgConn().CustomData()
	if data[warnedKey] == nil || s.streams != nil {
		return nil
	}
	delete(data, warnedKey)
	if _, err := conn.Exec(ctx, awaitStandbys); err != nil {
		return fmt.Errorf("wait for the synchronous standbys: %w", connErr(ctx, conn, err))
	}
	if data[warnedKey] != nil {
		delete(data, warnedKey)
		return fmt.Errorf("%w: the wait for the synchronous standbys was cancelled", store.ErrUnavailable)
	}
	return nil
}
