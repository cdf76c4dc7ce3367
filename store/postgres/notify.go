package postgres

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
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
// store's node id on the first line, then for each partition one line per
// commit announced: "VERSION PART", each followed, when the commit is
// carried, by a line "+ENTRIES", the commit's entries (see carryLine). A
// partition's last line names the highest version committed since the last
// notification. partID escapes newlines, so a line is always one partition.
// A reader that does not know "+" lines skips them, as lines without a space.
const (
	// maxPayload keeps a payload under PostgreSQL's limit of 8000 bytes.
	maxPayload = 7900
	// maxCarry bounds a carried commit's "+" line: a commit of small
	// values (the common sync) goes along whole, so a watcher on another
	// node takes it without reading the store; a larger one is announced
	// by its version, and read.
	maxCarry = 1024
	// maxCarried bounds the bytes of "+" lines one partition's commits
	// carry in one notification; the commits past it are announced by
	// version.
	maxCarried = 4096
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
// names each partition once with its latest version, and carries the
// entries of its commits that fit. It sends them on a connection of its
// own, so they never queue behind the commits that fill the pool: a busy
// node's watchers elsewhere would hear of its commits late.
type announcer struct {
	s        *Store
	interval time.Duration
	conn     *pgx.Conn // the loop's; nil until connected, and after a failure

	mu      sync.Mutex
	pending map[string]*pendingPart // by partition id
	closed  bool
	kick    chan struct{} // has an element when pending is not empty
	stopped chan struct{} // closed when the loop has sent the last
}

// pendingPart is what the next notification says of one partition.
type pendingPart struct {
	version uint64          // the highest version committed
	carried []carriedCommit // commits whose entries go along
	size    int             // the bytes of carried's lines
}

// carriedCommit is a commit and its "+" line.
type carriedCommit struct {
	version uint64
	line    string
}

func newAnnouncer(s *Store, interval time.Duration) *announcer {
	a := &announcer{s: s, interval: interval, pending: make(map[string]*pendingPart),
		kick: make(chan struct{}, 1), stopped: make(chan struct{})}
	go a.loop()
	return a
}

// add queues the announcement of c, committed to part; c is read before add
// returns, and may be nil (a commit announced by version alone).
func (a *announcer) add(part string, version uint64, c *store.Commit) {
	line, carry := carryLine(c, version)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	pp := a.pending[part]
	if pp == nil {
		pp = &pendingPart{}
		a.pending[part] = pp
	}
	pp.version = max(pp.version, version)
	if carry && pp.size+len(line) <= maxCarried {
		pp.carried = append(pp.carried, carriedCommit{version, line})
		pp.size += len(line)
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
		a.pending = make(map[string]*pendingPart, len(pending))
		a.mu.Unlock()
		for _, payload := range a.payloads(pending) {
			a.send(payload)
		}
	}
}

// payloads renders pending as payloads of at most maxPayload bytes; a
// commit's version line and its "+" line go in the same one.
func (a *announcer) payloads(pending map[string]*pendingPart) []string {
	var out []string
	var b strings.Builder
	put := func(unit string) bool {
		if len(a.s.node)+len(unit) > maxPayload {
			return false
		}
		if b.Len() > 0 && b.Len()+len(unit) > maxPayload {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteString(a.s.node)
		}
		b.WriteString(unit)
		return true
	}
	for part, pp := range pending {
		// Commits finish out of order; the lines go in version order.
		slices.SortFunc(pp.carried, func(x, y carriedCommit) int { return cmp.Compare(x.version, y.version) })
		named := false // the partition's highest version
		for _, c := range pp.carried {
			head := "\n" + strconv.FormatUint(c.version, 10) + " " + part
			if put(head+"\n+"+c.line) || put(head) {
				named = named || c.version == pp.version
			}
		}
		if !named {
			put("\n" + strconv.FormatUint(pp.version, 10) + " " + part) // past maxPayload: left to polls
		}
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

// carryLine encodes c's entries for a "+" line: base64 of the count of
// entries, then for each its key, a flags byte (1: deleted), value and
// scalar version, lengths as uvarints. Every entry has the commit's
// version. It reports false for a commit that is not carried: nil, an
// erase (a watcher rereads an erased partition), one not of version, or
// one whose line would pass maxCarry.
func carryLine(c *store.Commit, version uint64) (string, bool) {
	if c == nil || c.Erase || c.Version != version {
		return "", false
	}
	n := 1 // the least the encoding takes: skip those that cannot fit unencoded
	for _, e := range c.Entries {
		n += 4 + len(e.Key) + len(e.Value)
	}
	if base64.StdEncoding.EncodedLen(n) > maxCarry {
		return "", false
	}
	buf := make([]byte, 0, n+binary.MaxVarintLen64*(1+2*len(c.Entries)))
	buf = binary.AppendUvarint(buf, uint64(len(c.Entries)))
	for _, e := range c.Entries {
		buf = binary.AppendUvarint(buf, uint64(len(e.Key)))
		buf = append(buf, e.Key...)
		var flags byte
		if e.Deleted {
			flags = 1
		}
		buf = append(buf, flags)
		buf = binary.AppendUvarint(buf, uint64(len(e.Value)))
		buf = append(buf, e.Value...)
		buf = binary.AppendUvarint(buf, e.ScalarVersion)
	}
	line := base64.StdEncoding.EncodeToString(buf)
	return line, len(line) <= maxCarry
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

// parsePayload calls fn for each commit a payload from another store
// announces, in the payload's order; it ignores this store's own payloads
// and malformed lines, and a "+" line it cannot decode (its commit is then
// announced by version).
func (s *Store) parsePayload(payload string, fn func(store.Announcement)) {
	node, rest, _ := strings.Cut(payload, "\n")
	if node == s.node {
		return
	}
	var prev *store.Announcement // the last version line's, until its "+" line may follow
	for line := range strings.SplitSeq(rest, "\n") {
		if carried, ok := strings.CutPrefix(line, "+"); ok {
			if prev != nil && !prev.Carried {
				prev.Entries, prev.Carried = parseCarried(carried, prev.Version)
			}
			continue
		}
		if prev != nil {
			fn(*prev)
			prev = nil
		}
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
		prev = &store.Announcement{Partition: p, Version: v}
	}
	if prev != nil {
		fn(*prev)
	}
}

// parseCarried decodes a "+" line of a commit at version (see carryLine);
// it reports false for one it cannot decode.
func parseCarried(line string, version uint64) ([]store.Entry, bool) {
	b, err := base64.StdEncoding.DecodeString(line)
	if err != nil {
		return nil, false
	}
	next := func() (uint64, bool) {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return x, true
	}
	bytes := func() ([]byte, bool) {
		n, ok := next()
		if !ok || n > uint64(len(b)) {
			return nil, false
		}
		out := b[:n:n]
		b = b[n:]
		return out, true
	}
	count, ok := next()
	if !ok || count > uint64(len(b)) { // each entry takes at least a byte
		return nil, false
	}
	entries := make([]store.Entry, count)
	for i := range entries {
		key, ok := bytes()
		if !ok || len(b) == 0 || b[0] > 1 {
			return nil, false
		}
		deleted := b[0] == 1
		b = b[1:]
		val, ok := bytes()
		if !ok {
			return nil, false
		}
		scalar, ok := next()
		if !ok {
			return nil, false
		}
		e := store.Entry{Key: string(key), Deleted: deleted, Version: version, ScalarVersion: scalar}
		if !deleted {
			e.Value = val
		}
		entries[i] = e
	}
	if len(b) != 0 {
		return nil, false
	}
	return entries, true
}

// Notifications implements [store.Notifier]: it listens on a connection of
// its own, reconnecting after failures, and calls fn for each commit that
// another store (another process) announces, until ctx is done or the
// store closes. It returns nil then. It calls listening once each LISTEN
// has taken effect: a commit whose NOTIFY comes later reaches fn, and one
// whose NOTIFY came before had committed already.
func (s *Store) Notifications(ctx context.Context, fn func(store.Announcement), listening func()) error {
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
	fn        func(store.Announcement)
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
