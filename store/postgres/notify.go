package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"

	"github.com/dalvdb/dalv/store"
)

// Notifications go on one channel per schema: dalv_commits for the tables
// in public, dalv_commits.SCHEMA for others. A payload is the sending
// store's node id on the first line, then one line per partition: "VERSION
// PART", the highest version committed since the last notification. partID
// escapes newlines, so a line is always one partition.
const (
	// maxPayload keeps a payload under PostgreSQL's limit of 8000 bytes.
	maxPayload = 7900
	// listenRetry is how long a listener waits before reconnecting.
	listenRetry = time.Second
	// notifyTimeout bounds one NOTIFY.
	notifyTimeout = 5 * time.Second
)

// notifyChannel is the channel of the stores on schema. PostgreSQL cuts
// identifiers at 63 bytes: a longer name is cut, and a hash of the whole
// schema name keeps it apart from others.
func notifyChannel(schema string) string {
	c := "dalv_commits"
	if schema != "public" {
		c += "." + schema
	}
	if len(c) > 63 {
		h := fnv.New64a()
		h.Write([]byte(schema))
		c = fmt.Sprintf("%.46s.%016x", c, h.Sum64())
	}
	return c
}

// announcer coalesces this store's commits into NOTIFYs: commits made while
// one is sent, or within the interval after it, share the next one, which
// names each partition once with its latest version. It sends them on a
// connection of its own, so they never queue behind the commits that fill
// the pool: a busy node's watchers elsewhere would hear of its commits late.
type announcer struct {
	s        *Store
	interval time.Duration
	conn     *pgx.Conn // the loop's; nil until connected, and after a failure

	mu      sync.Mutex
	pending map[string]uint64 // partition id -> highest version
	closed  bool
	kick    chan struct{} // has an element when pending is not empty
	stopped chan struct{} // closed when the loop has sent the last
}

func newAnnouncer(s *Store, interval time.Duration) *announcer {
	a := &announcer{s: s, interval: interval, pending: make(map[string]uint64),
		kick: make(chan struct{}, 1), stopped: make(chan struct{})}
	go a.loop()
	return a
}

// add queues a commit's announcement.
func (a *announcer) add(part string, version uint64) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	if version > a.pending[part] {
		a.pending[part] = version
	}
	select {
	case a.kick <- struct{}{}:
	default:
	}
	a.mu.Unlock()
}

// close sends what is pending and stops the loop.
func (a *announcer) close() {
	a.mu.Lock()
	a.closed = true
	close(a.kick)
	a.mu.Unlock()
	<-a.stopped
}

func (a *announcer) loop() {
	defer close(a.stopped)
	defer a.closeConn()
	var last time.Time
	for range a.kick {
		if wait := a.interval - time.Since(last); wait > 0 {
			time.Sleep(wait)
		}
		last = time.Now()
		a.mu.Lock()
		pending := a.pending
		a.pending = make(map[string]uint64, len(pending))
		a.mu.Unlock()
		for _, payload := range a.payloads(pending) {
			a.send(payload)
		}
	}
}

// payloads renders pending as payloads of at most maxPayload bytes.
func (a *announcer) payloads(pending map[string]uint64) []string {
	var out []string
	var b strings.Builder
	for part, v := range pending {
		line := strconv.FormatUint(v, 10) + " " + part
		if len(a.s.node)+1+len(line) > maxPayload {
			continue // a partition id too long to announce; pollers find it
		}
		if b.Len() > 0 && b.Len()+1+len(line) > maxPayload {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteString(a.s.node)
		}
		b.WriteByte('\n')
		b.WriteString(line)
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

// send sends one NOTIFY, connecting first when it must; a failure loses
// it, which is allowed, and drops the connection.
func (a *announcer) send(payload string) {
	ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
	defer cancel()
	var err error
	if a.conn == nil {
		cfg := a.s.connCfg.Copy()
		// A notification is a hint, not data: its transaction need not
		// wait for the WAL to reach the disk, behind every commit's flush.
		cfg.RuntimeParams["synchronous_commit"] = "off"
		a.conn, err = pgx.ConnectConfig(ctx, cfg)
	}
	if err == nil {
		_, err = a.conn.Exec(ctx, "SELECT pg_notify($1, $2)", a.s.channel, payload)
	}
	if err != nil {
		a.s.log.Warn("postgres store: notification not sent; other nodes find the commits at their next poll", "err", err)
		a.closeConn()
	}
}

// closeConn closes the loop's connection, if any.
func (a *announcer) closeConn() {
	if a.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = a.conn.Close(ctx)
		a.conn = nil
	}
}

// parsePayload calls fn for each partition a payload from another store
// names; it ignores this store's own and malformed lines.
func (s *Store) parsePayload(payload string, fn func(p store.Partition, version uint64)) {
	node, rest, _ := strings.Cut(payload, "\n")
	if node == s.node {
		return
	}
	for line := range strings.SplitSeq(rest, "\n") {
		num, part, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			continue
		}
		p, err := parsePartID(part)
		if err != nil {
			continue
		}
		fn(p, v)
	}
}

// Notifications implements [store.Notifier]: it listens on a connection of
// its own, reconnecting after failures, and calls fn for each commit that
// another store (another process) announces, until ctx is done or the
// store closes. It returns nil then. It calls listening once each LISTEN
// has taken effect: a commit whose NOTIFY comes later reaches fn, and one
// whose NOTIFY came before had committed already.
func (s *Store) Notifications(ctx context.Context, fn func(p store.Partition, version uint64), listening func()) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	s.gate.Exit() // a listener does not hold Close up: Close stops it
	ctx, cancel := s.untilClosed(ctx)
	defer cancel()
	l := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, s.connCfg)
		},
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() == nil {
				s.log.Warn("postgres store: listening for notifications; reconnecting", "err", err, "retry", listenRetry)
			}
		},
		ReconnectDelay: listenRetry,
	}
	l.Handle(s.channel, &listenHandler{s: s, fn: fn, listening: listening})
	err := l.Listen(ctx)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

// listenHandler passes one listener's notifications on, and tells when it
// listens.
type listenHandler struct {
	s         *Store
	fn        func(p store.Partition, version uint64)
	listening func()
}

// HandleNotification implements [pgxlisten.Handler].
func (h *listenHandler) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	h.s.parsePayload(n.Payload, h.fn)
	return nil
}

// HandleBacklog implements [pgxlisten.BacklogHandler]: pgxlisten calls it
// once LISTEN has run, in a transaction of its own, so it is in effect.
func (h *listenHandler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	if h.listening != nil {
		h.listening()
	}
	return nil
}
