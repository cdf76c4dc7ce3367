// Package postgres is DalvDB's store for many stateless servers: a
// [store.Store] on one PostgreSQL database, shared by any number
// of `dalv serve` processes.
//
// Guarantees:
//   - An Update is one transaction whose first statement locks the
//     partition's head row (INSERT ... ON CONFLICT DO UPDATE ... RETURNING),
//     so commits of one partition are serialised across every process, and
//     commits of different partitions never wait for each other. fn's reads,
//     the device's idempotency record and all writes happen in that
//     transaction, so a batch retried on another node is answered as the
//     first success. Deadlocks and serialisation failures, and connection
//     failures before COMMIT was sent, are retried: fn may be called again.
//   - A store holds the state of small partitions it commits to, and
//     commits to one in a single statement that updates the head only if
//     it is still the held one, taking the same lock; when another process
//     committed meanwhile, the statement writes nothing and the Update runs
//     as the transaction above (see cache.go).
//   - A commit is durable when Update returns (with the server's
//     synchronous_commit); one whose wait for the synchronous standbys was
//     cancelled is acknowledged only once they have it, and what is read
//     is told only once they have it (see standbys.go). When the
//     connection is lost while COMMIT is in flight, the outcome is
//     unknown: Update fails with an error wrapping [store.ErrUnavailable],
//     and the commit may or may not be there.
//   - A View is a REPEATABLE READ READ ONLY transaction: one snapshot.
//   - The change feed is an outbox read only below the transaction horizon:
//     each commit writes a row whose feed key is at least its transaction
//     id and above the partition's previous key, and readers return only
//     rows whose key is below the oldest transaction id still running
//     (pg_snapshot_xmin). No transaction still in flight can write a row
//     below that, so a reader that resumes after the last position it saw
//     never skips a commit; a long-open transaction stalls the feed (see
//     the dalv_feed_stall_seconds metric) but never makes it skip. Feed
//     keys count from the server's WAL timeline times 2^48, so that after
//     a failover, whose promoted standby gives out again the ids of the
//     transactions it never received, keys stay above every key given
//     before it. With synchronous standbys, a reader gets records only
//     once the standbys have them (see feedPage).
//   - Commits are announced to other processes with a coalesced NOTIFY on
//     channel dalv_commits (of the schema) after they commit; [Store.Notifications] listens
//     on a connection of its own and reconnects by itself. A notification
//     carries the entries of each small commit, so a watcher elsewhere can
//     take it without a read. Notifications are hints: nothing depends on
//     their arrival.
//   - A lost or refused connection, or PostgreSQL not answering within
//     Options.Timeout, fails the operation with an error wrapping
//     [store.ErrUnavailable]; the pool reconnects by itself. A caller that
//     goes away stops the operation before its next statement, never in
//     the middle of one.
//
// On Citus (a database with the citus extension), the store lays out and
// distributes its tables itself, and keeps the same guarantees with
// commits that each run on one worker and a feed ordered per shard instead
// of by the transaction horizon (see citus.go). It refuses a cluster where
// a node's synchronous_commit is off, where a shard move can lose commits
// without a crash.
//
// Caveats: an erase deletes the partition's rows, but PostgreSQL keeps the
// dead tuples' bytes on disk until VACUUM reuses the space (and in its WAL
// and backups). The feed stalls while any transaction that holds a
// transaction id stays open, dalv's or not.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dalvdb/dalv/store"
)

// Defaults of [Options].
const (
	DefaultMaxConns        = 10
	DefaultNotifyInterval  = 5 * time.Millisecond
	DefaultApplicationName = "dalv"
	DefaultFeedWait        = time.Second
	DefaultTimeout         = 10 * time.Second
	DefaultCheckInterval   = 30 * time.Second
)

// Options configures [Open]. The zero value is ready to use.
type Options struct {
	// Logger receives the store's warnings (lost notifications, listener
	// reconnects). nil discards them.
	Logger *slog.Logger
	// Schema is the schema the tables live in, created if missing. Empty
	// means the URL's search_path when it names one schema (created if
	// missing too), else the connection's current schema.
	Schema string
	// MaxConns bounds the connection pool; 0 means the URL's
	// pool_max_conns, or DefaultMaxConns.
	MaxConns int32
	// NotifyInterval is the least time between two NOTIFYs of this store:
	// commits made meanwhile share one. 0 means DefaultNotifyInterval.
	NotifyInterval time.Duration
	// FeedWait bounds how long a Feed call waits for transactions in
	// flight that hold committed records back; 0 means DefaultFeedWait,
	// negative not to wait.
	FeedWait time.Duration
	// CacheBytes bounds the memory of the small partitions' states the
	// store keeps to commit to them in one statement; 0 means
	// DefaultCacheBytes, negative keeps none.
	CacheBytes int
	// Timeout bounds each operation's time with PostgreSQL: an Update, a
	// View, one page of the feed. An operation past it fails with an error
	// wrapping [store.ErrUnavailable], its connection closed; one whose
	// COMMIT was in flight may or may not have committed. 0 means
	// DefaultTimeout, negative no bound but the caller's.
	Timeout time.Duration
	// CheckInterval is, on Citus, how often the store checks every node's
	// synchronous_commit again after Open did; 0 means
	// DefaultCheckInterval.
	CheckInterval time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.NotifyInterval == 0 {
		o.NotifyInterval = DefaultNotifyInterval
	}
	if o.FeedWait == 0 {
		o.FeedWait = DefaultFeedWait
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = DefaultCheckInterval
	}
	if o.NotifyInterval < 0 {
		return o, fmt.Errorf("notify interval %v is negative", o.NotifyInterval)
	}
	if o.CheckInterval < 0 {
		return o, fmt.Errorf("check interval %v is negative", o.CheckInterval)
	}
	if o.MaxConns < 0 {
		return o, fmt.Errorf("max conns %d is negative", o.MaxConns)
	}
	return o, nil
}

// Store is a [store.Store] on PostgreSQL. It is safe for concurrent use.
type Store struct {
	pool    *pgxpool.Pool
	log     *slog.Logger
	connCfg *pgx.ConnConfig // for the listening connections
	node    string          // this store's id in its notifications
	ann     *announcer
	held    *held
	// standbyWaits are the Views' waits for the synchronous standbys (see
	// waitStandbys); standbysAsked is when a View last asked whether the
	// server has any (Unix nanoseconds), and hasStandbys the answer.
	standbyWaits  batcher[*standbyWait]
	standbysAsked atomic.Int64
	hasStandbys   atomic.Bool
	// streams are the feed's streams on Citus; nil on PostgreSQL without
	// it (see citus.go).
	streams *streams
	// transactions counts the commits written by an Update's own
	// transaction (not in a group); calls those written by one call on
	// Citus (see citusDirect).
	transactions, calls atomic.Int64
	hooks               testHooks
	now                 func() time.Time // the store's clock
	// feedWait is Options.FeedWait.
	feedWait time.Duration
	// timeout is Options.Timeout, and errTimeout the error of an operation
	// past it.
	timeout    time.Duration
	errTimeout error
	// channel is the NOTIFY channel of the stores on this schema.
	channel string

	// gate admits Updates, Views, Compacts and feed reads until Close,
	// which waits for them.
	gate store.Gate
	done chan struct{} // closed by Close: listeners stop

	diskBytes atomic.Int64 // the last size DiskBytes read
	// async is, on Citus, the refusal of commits while a node commits
	// asynchronously; nil otherwise (see watchCommitsDurable).
	async atomic.Pointer[error]
	// bg counts the store's own goroutines, which Close waits for.
	bg sync.WaitGroup
}

var (
	_ store.Store    = (*Store)(nil)
	_ store.Feeder   = (*Store)(nil)
	_ store.Notifier = (*Store)(nil)
	_ store.Checker  = (*Store)(nil)
)

// testHooks let this package's tests stop a commit at a barrier. They wrap
// the statements a commit sends, on both of its ways: an Update's own
// transaction, and a group's statement of held commits (which then runs in
// a transaction of its own).
type testHooks struct {
	// beforeLock runs in the commit's transaction before the statement that
	// locks the head: an Update's first, or the group's.
	beforeLock func(ctx context.Context, conn *pgx.Conn) error
	// beforeCommit runs after the writes, before COMMIT, once for each
	// commit written, with its feed key.
	beforeCommit func(p store.Partition, feedKey int64)
	// noReadAhead turns the reads ahead off, so every read is a query.
	noReadAhead bool
	// failRead, when it returns an error, fails a statement of reads of
	// what sparse states lack with it, instead of sending it.
	failRead func() error
}

// Open connects to the PostgreSQL database at url (a postgres:// URL or a
// key=value DSN), creates or migrates DalvDB's schema, and returns the
// store. It fails with an error wrapping [store.ErrUnavailable] when the
// server cannot be reached.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("open postgres store: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, fmt.Errorf("open postgres store: cannot parse the URL: %v", redactErr(err, url))
	}
	switch {
	case opts.MaxConns > 0:
		cfg.MaxConns = opts.MaxConns
	case !strings.Contains(url, "pool_max_conns"):
		cfg.MaxConns = DefaultMaxConns
	}
	rp := cfg.ConnConfig.RuntimeParams
	if rp["application_name"] == "" {
		rp["application_name"] = DefaultApplicationName
	}
	schema := opts.Schema
	if schema == "" {
		schema = singleSchema(rp["search_path"])
	}
	if schema != "" {
		rp["search_path"] = pgx.Identifier{schema}.Sanitize()
	}
	cfg.ConnConfig.OnNotice = noteWarning
	where := fmt.Sprintf("%s:%d/%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres store %s: %w", where, storeErr(ctx, err))
	}
	citus, err := hasCitus(ctx, pool)
	if err == nil && citus {
		err = citusCommitsDurable(ctx, pool)
	}
	if err == nil {
		if schema, err = migrate(ctx, pool, schema, citus); err != nil {
			err = fmt.Errorf("schema: %w", err)
		}
	}
	var streams *streams
	if err == nil && citus {
		if streams, err = loadStreams(ctx, pool); err != nil {
			err = fmt.Errorf("schema: %w", err)
		}
	}
	if err != nil {
		pool.Close()
		err = storeErr(ctx, err)
		if errors.Is(err, store.ErrUnavailable) {
			return nil, fmt.Errorf("open postgres store: cannot reach PostgreSQL at %s: %w", where, err)
		}
		return nil, fmt.Errorf("open postgres store %s: %w", where, err)
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	s := &Store{
		pool:     pool,
		log:      opts.Logger,
		connCfg:  cfg.ConnConfig.Copy(),
		node:     hex.EncodeToString(id[:]),
		done:     make(chan struct{}),
		feedWait: opts.FeedWait,
		timeout:  opts.Timeout,
		errTimeout: fmt.Errorf("%w: PostgreSQL did not answer within %v (the store's timeout)",
			store.ErrUnavailable, opts.Timeout),
		channel: notifyChannel(schema),
		now:     time.Now,
		streams: streams,
	}
	s.ann = newAnnouncer(s, opts.NotifyInterval)
	if citus {
		opts.Logger.Info("postgres store: on Citus; grouped commits are off: each commit is a call or a transaction of one worker",
			"schema", schema, "streams", len(streams.names))
		s.bg.Go(func() { s.watchCommitsDurable(opts.CheckInterval) })
	}
	s.held = newHeld(s, opts.CacheBytes)
	// One statement serves any number of waits.
	s.standbyWaits = batcher[*standbyWait]{size: func(*standbyWait) int { return 0 }, run: s.runStandbyWaits, limit: math.MaxInt}
	return s, nil
}

// singleSchema returns the schema a search_path of one schema names, or ""
// for any other (empty, several, or $user).
func singleSchema(path string) string {
	path = strings.TrimSpace(path)
	if path == "" || strings.Contains(path, ",") || strings.Contains(path, "$") {
		return ""
	}
	if len(path) >= 2 && path[0] == '"' && path[len(path)-1] == '"' {
		return strings.ReplaceAll(path[1:len(path)-1], `""`, `"`)
	}
	return strings.ToLower(path)
}

// DiskBytes implements [store.Store]: the size of the store's tables and
// indexes. It reads it with a short timeout, and answers the last size read
// when PostgreSQL does not answer.
func (s *Store) DiskBytes() int64 {
	if s.gate.Enter() != nil {
		return 0
	}
	defer s.gate.Exit()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var n int64
	sql := `SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint
		FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
		WHERE ns.nspname = current_schema() AND c.relkind = 'r' AND c.relname LIKE 'dalv\_%'`
	if s.streams != nil {
		sql = citusDiskBytes
	}
	err := s.pool.QueryRow(ctx, sql).Scan(&n)
	if err != nil {
		return s.diskBytes.Load()
	}
	s.diskBytes.Store(n)
	return n
}

// untilClosed returns a context that parent's end or the store's Close
// cancels, whichever comes first; the caller calls cancel when done with it.
func (s *Store) untilClosed(parent context.Context) (ctx context.Context, cancel context.CancelFunc) {
	ctx, cancel = context.WithCancel(parent)
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// Close implements [store.Store]: it waits for operations in flight, sends
// the last notifications, stops the listeners and closes the pool. Closing
// a closed store does nothing.
func (s *Store) Close() error {
	if !s.gate.Close() {
		return nil
	}
	s.ann.close()
	close(s.done)
	s.bg.Wait()
	// The pool's Close waits for every connection to come back. One that
	// never does is a leak: say so, with the pool's counts, rather than
	// hang the process's exit.
	closed := make(chan struct{})
	go func() { defer close(closed); s.pool.Close() }()
	select {
	case <-closed:
		return nil
	case <-time.After(closeWait):
		st := s.pool.Stat()
		return fmt.Errorf("close postgres store: %d connections still in use after %v (%d acquired, %d being opened)",
			st.TotalConns(), closeWait, st.AcquiredConns(), st.ConstructingConns())
	}
}

// closeWait is how long Close waits for the pool's connections to come
// back once no operation is running.
const closeWait = 5 * time.Second

// opContext returns the context an operation's statements run under, and
// its cancel function. The caller's cancellation does not reach it: pgx
// closes a connection whose statement is cancelled, and a new one costs
// PostgreSQL a backend to start and warm, so a cancelled operation stops at
// its next statement instead (see [live]). The caller's deadline does reach
// it, and so does Options.Timeout, which ends it with s.errTimeout.
func (s *Store) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	octx, stop := context.WithoutCancel(ctx), context.CancelFunc(func() {})
	if d, ok := ctx.Deadline(); ok {
		octx, stop = context.WithDeadline(octx, d)
	}
	if s.timeout > 0 {
		var stopTimeout context.CancelFunc
		octx, stopTimeout = context.WithTimeoutCause(octx, s.timeout, s.errTimeout)
		stopDeadline := stop
		stop = func() { stopTimeout(); stopDeadline() }
	}
	return octx, stop
}

// acquire takes a connection from the pool for an operation whose
// statements run under octx (see opContext). Waiting for one ends when
// either ctx or octx does: no connection is at stake yet.
func (s *Store) acquire(ctx, octx context.Context) (*pgxpool.Conn, error) {
	actx, cancel := context.WithCancelCause(octx)
	defer cancel(nil)
	stop := context.AfterFunc(ctx, func() { cancel(ctx.Err()) })
	defer stop()
	conn, err := s.pool.Acquire(actx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, storeErr(ctx, err)
		}
		return nil, storeErr(octx, err)
	}
	return conn, nil
}

// storeErr marks the errors of a lost, refused or failed connection with
// store.ErrUnavailable. ctx's own errors are returned as they are.
func storeErr(ctx context.Context, err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		return err
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if cause := context.Cause(ctx); errors.Is(cause, store.ErrUnavailable) {
			return fmt.Errorf("%w (%v)", cause, err) // the store's timeout
		}
		if errors.Is(err, ctxErr) {
			return err
		}
		return fmt.Errorf("%w (%v)", ctxErr, err)
	}
	if isConnErr(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// connErr is storeErr for an error of a statement on conn: when conn is
// closed after it, the connection was lost, whatever the error says.
func connErr(ctx context.Context, conn *pgxpool.Conn, err error) error {
	if err != nil && ctx.Err() == nil && conn.Conn().IsClosed() && !errors.Is(err, store.ErrUnavailable) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return storeErr(ctx, err)
}

// isConnErr reports whether err says the connection failed, or that the
// server cannot take work now, rather than that a statement failed.
func isConnErr(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // admin or crash shutdown, cannot connect now
			return true
		case pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE):
		return true
	case pgconn.SafeToRetry(err):
		return true
	}
	// pgx's own "conn closed" and "conn busy" errors have no type.
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "closed pool")
}

// sqlState returns err's SQLSTATE, or "".
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// redactErr returns err's message with the password of url, if any, cut.
func redactErr(err error, url string) string {
	msg := err.Error()
	if cfg, perr := pgconn.ParseConfig(url); perr == nil && cfg.Password != "" {
		msg = strings.ReplaceAll(msg, cfg.Password, "xxxxx")
	}
	if i := strings.Index(url, "://"); i >= 0 {
		if at := strings.Index(url[i+3:], "@"); at >= 0 {
			if colon := strings.Index(url[i+3:i+3+at], ":"); colon >= 0 {
				msg = strings.ReplaceAll(msg, url[i+3+colon+1:i+3+at], "xxxxx")
			}
		}
	}
	return msg
}
