package postgres

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dalvdb/dalv/store"
)

// Pages of Changes and Scan: rows are read a page at a time, and fn called
// between pages, so fn may use the reader and stopping early reads little.
// A page starts small, and grows while its rows are small.
const (
	minPage      = 16
	maxPage      = 1024
	maxPageBytes = 4 << 20
)

// reader is the store.Reader of one Update's or View's transaction: its
// statements run on one connection. (An Update on a held state reads
// through a heldReader instead.) In a View, the transaction begins with
// the first statement, sent together with it.
type reader struct {
	ctx    context.Context // the operation's (see Store.opContext)
	caller context.Context // the caller's: checked before each statement
	conn   *pgxpool.Conn
	p      store.Partition
	part   string

	begin string // the BEGIN still to send with the first statement
	begun bool
	// askStandbys has a View ask, with its BEGIN, whether the server has
	// synchronous standbys (see Store.knowStandbys); standbys is the answer.
	askStandbys, standbys bool

	headRead bool // the head, read (in an Update, locked)
	head     store.Head
	pf       *prefetch // what was read ahead of fn's reads, or nil
	// readAhead lets a View's first Head read the entries ahead.
	readAhead bool
}

// A partition's first statement in an Update (and a View's first Head)
// comes with the reads ahead of a small partition: its device records and
// its entries, each value up to prefetchValue bytes and all of them up to
// holdBytes. fn's reads of a small partition then take no round trip: a
// sync is two, the lock and the commit. An Update reads up to holdRows of
// each ahead, as many as a held state may have (see held.go), so that a
// partition of that size can be held; a View, and an Update of a partition
// found too big to hold a moment before, read prefetchRows. What one read
// ahead costs is so bounded in rows and in bytes.
const (
	prefetchRows  = 16
	holdRows      = 256
	prefetchValue = 4096
	holdBytes     = prefetchRows * prefetchValue // 64 KiB: a read of prefetchRows never passes it
)

// The statements that read ahead, the entries alone or with the device
// records (as rows whose first column is NULL, key the device, version the
// batch); each part reads one row more than it keeps, to know whether it
// has them all. A value is left out (NULL, and the last column true) when
// it is bigger than prefetchValue, or when the values up to it, in key
// order, pass holdBytes.
var (
	prefetchEntries = prefetchEntriesSQL(prefetchRows)
	prefetchAll     = prefetchAllSQL(prefetchRows)
	prefetchAllHeld = prefetchAllSQL(holdRows)
)

// prefetchEntriesSQL reads up to rows entries of a partition ahead.
func prefetchEntriesSQL(rows int) string {
	return fmt.Sprintf(`SELECT key, version, scalar_version,
		CASE WHEN octet_length(value) <= %[1]d AND upto <= %[3]d THEN value END, tomb,
		COALESCE(octet_length(value) > %[1]d OR upto > %[3]d, false)
		FROM (SELECT key, version, scalar_version, value, tomb_nanos IS NOT NULL AS tomb,
			sum(COALESCE(octet_length(value), 0)) OVER (ORDER BY key ROWS UNBOUNDED PRECEDING) AS upto
			FROM dalv_entries WHERE part = $1 ORDER BY key LIMIT %[2]d) e`, prefetchValue, rows+1, holdBytes)
}

// prefetchAllSQL reads up to rows entries and rows device records ahead.
func prefetchAllSQL(rows int) string {
	return fmt.Sprintf(`(SELECT true AS entry, %[2]s) UNION ALL
		(SELECT NULL, device, batch, 0, NULL, false, false FROM dalv_devices WHERE part = $1 LIMIT %[1]d)`,
		rows+1, prefetchEntriesSQL(rows)[len("SELECT "):])
}

// prefetch is what was read ahead of fn's reads.
type prefetch struct {
	devices    map[string]uint64
	devicesAll bool            // devices holds every device record of the partition
	entries    []store.Entry   // in key order
	omitted    map[string]bool // entries whose value was too big to read ahead
	entriesAll bool            // entries holds every entry of the partition
	hasDevices bool            // devices were read ahead at all
	rows       int             // the most entries, and device records, read ahead
	read       bool            // the read ahead came back whole
}

// queueAll queues the read ahead of entries and device records into b, up
// to rows of each: prefetchRows or holdRows.
func (pf *prefetch) queueAll(b *pgx.Batch, part string, rows int) {
	pf.hasDevices, pf.rows = true, rows
	sql := prefetchAll
	if rows == holdRows {
		sql = prefetchAllHeld
	}
	b.Queue(sql, part).Query(pf.scan)
}

// queueEntries queues the read ahead of up to prefetchRows entries into b.
func (pf *prefetch) queueEntries(b *pgx.Batch, part string) {
	pf.rows = prefetchRows
	b.Queue(prefetchEntries, part).Query(pf.scan)
}

// tooBig reports whether the read ahead found more than a held state may
// have: more entries or device records, or values left out.
func (pf *prefetch) tooBig() bool {
	return pf != nil && pf.read && !pf.holdable()
}

// scan reads the rows of prefetchAll or prefetchEntries.
func (pf *prefetch) scan(rows pgx.Rows) error {
	entries, devices := 0, 0
	withKind := false
	for rows.Next() {
		var (
			isEntry *bool
			e       store.Entry
			omitted bool
			err     error
		)
		if entries+devices == 0 {
			// The columns are known once a row has come: rows that
			// PostgreSQL refused, or whose connection was lost, have none
			// (and pgx's FieldDescriptions dereferences nil on them).
			withKind = len(rows.FieldDescriptions()) == 7
		}
		if withKind {
			e, err = scanEntryRow(rows, &isEntry, &omitted)
		} else {
			e, err = scanEntryRow(rows, nil, &omitted)
		}
		if err != nil {
			return err
		}
		if withKind && isEntry == nil {
			if devices++; devices <= pf.rows {
				if pf.devices == nil {
					pf.devices = make(map[string]uint64)
				}
				pf.devices[e.Key] = e.Version
			}
			continue
		}
		if entries++; entries > pf.rows {
			continue
		}
		if omitted {
			if pf.omitted == nil {
				pf.omitted = make(map[string]bool)
			}
			pf.omitted[e.Key] = true
		}
		pf.entries = append(pf.entries, e)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	slices.SortFunc(pf.entries, func(a, b store.Entry) int { return strings.Compare(a.Key, b.Key) })
	pf.entriesAll = entries <= pf.rows
	pf.devicesAll = devices <= pf.rows
	pf.read = true
	return nil
}

// scanEntryRow reads a row of prefetchAll (isEntry set) or prefetchEntries.
func scanEntryRow(rows pgx.Rows, isEntry **bool, omitted *bool) (store.Entry, error) {
	var (
		key     []byte
		v, sv   int64
		val     []byte
		deleted bool
		err     error
	)
	if isEntry != nil {
		err = rows.Scan(isEntry, &key, &v, &sv, &val, &deleted, omitted)
	} else {
		err = rows.Scan(&key, &v, &sv, &val, &deleted, omitted)
	}
	if err != nil {
		return store.Entry{}, err
	}
	e := store.Entry{Key: string(key), Version: uint64(v), ScalarVersion: uint64(sv), Deleted: deleted}
	if !deleted {
		if val == nil {
			val = []byte{}
		}
		e.Value = val
	}
	return e, nil
}

// entry returns the read-ahead entry of key: known is false when only a
// query can tell.
func (pf *prefetch) entry(key string) (e store.Entry, ok, known bool) {
	if pf == nil {
		return store.Entry{}, false, false
	}
	i, found := slices.BinarySearchFunc(pf.entries, key, func(e store.Entry, key string) int { return strings.Compare(e.Key, key) })
	switch {
	case found && !pf.omitted[key]:
		return cloneEntry(pf.entries[i]), true, true
	case !found && pf.entriesAll:
		return store.Entry{}, false, true
	}
	return store.Entry{}, false, false
}

// complete reports whether every entry of the partition, values and all,
// was read ahead.
func (pf *prefetch) complete() bool { return pf != nil && pf.entriesAll && len(pf.omitted) == 0 }

// cloneEntry copies e's value: each read hands out its own.
func cloneEntry(e store.Entry) store.Entry {
	if e.Value != nil {
		e.Value = append([]byte{}, e.Value...)
	}
	return e
}

// queueBegin queues the BEGIN of a View's transaction, and the question
// whether the server has synchronous standbys if it is to be asked.
func (r *reader) queueBegin(b *pgx.Batch) {
	b.Queue(r.begin)
	if r.askStandbys {
		b.Queue(hasStandbys).QueryRow(func(row pgx.Row) error { return row.Scan(&r.standbys) })
	}
	r.begin, r.begun = "", true
}

// query runs sql and hands its rows to scan, which must read them all
// (without calling back into the reader).
func (r *reader) query(scan func(pgx.Rows) error, sql string, args ...any) error {
	if err := r.caller.Err(); err != nil {
		return err
	}
	if r.begin != "" {
		b := &pgx.Batch{}
		r.queueBegin(b)
		b.Queue(sql, args...).Query(scan)
		return connErr(r.ctx, r.conn, r.conn.SendBatch(r.ctx, b).Close())
	}
	rows, err := r.conn.Query(r.ctx, sql, args...)
	if err != nil {
		return connErr(r.ctx, r.conn, err)
	}
	err = scan(rows)
	rows.Close()
	if err == nil {
		err = rows.Err()
	}
	return connErr(r.ctx, r.conn, err)
}

// Head implements store.Reader.
func (r *reader) Head() (store.Head, error) {
	if r.headRead {
		return r.head, nil
	}
	var h store.Head
	scan := func(rows pgx.Rows) error {
		for rows.Next() {
			var v, hz int64
			if err := rows.Scan(&v, &hz); err != nil {
				return err
			}
			h = store.Head{Version: uint64(v), Horizon: uint64(hz)}
		}
		return nil
	}
	const sql = "SELECT version, horizon FROM dalv_heads WHERE part = $1"
	var err error
	if err := r.caller.Err(); err != nil {
		return store.Head{}, err
	}
	if r.begin != "" && r.readAhead {
		// A View's first read: the entries of a small partition come along.
		b := &pgx.Batch{}
		r.queueBegin(b)
		b.Queue(sql, r.part).Query(scan)
		pf := &prefetch{}
		pf.queueEntries(b, r.part)
		if err = connErr(r.ctx, r.conn, r.conn.SendBatch(r.ctx, b).Close()); err == nil {
			r.pf = pf
		}
	} else {
		err = r.query(scan, sql, r.part)
	}
	if err != nil {
		return store.Head{}, fmt.Errorf("head %s: %w", r.p, err)
	}
	// A View's snapshot does not move: Changes past the head are known.
	r.head, r.headRead = h, true
	return h, nil
}

// entryCols are the columns scanEntry reads.
const entryCols = "key, version, scalar_version, value, tomb_nanos IS NOT NULL"

// scanEntry reads one row of entryCols.
func scanEntry(rows pgx.Rows) (store.Entry, int, error) {
	var (
		key     []byte
		v, sv   int64
		val     []byte
		deleted bool
		size    int
		scanErr error
	)
	scanErr = rows.Scan(&key, &v, &sv, &val, &deleted)
	if scanErr != nil {
		return store.Entry{}, 0, scanErr
	}
	e := store.Entry{Key: string(key), Version: uint64(v), ScalarVersion: uint64(sv), Deleted: deleted}
	if !deleted {
		if val == nil {
			val = []byte{}
		}
		e.Value = val
	}
	size = len(key) + len(val) + 32
	return e, size, nil
}

// Get implements store.Reader.
func (r *reader) Get(key string) (store.Entry, bool, error) {
	if e, ok, known := r.pf.entry(key); known {
		return e, ok, nil
	}
	var e store.Entry
	ok := false
	err := r.query(func(rows pgx.Rows) error {
		for rows.Next() {
			var err error
			if e, _, err = scanEntry(rows); err != nil {
				return err
			}
			ok = true
		}
		return nil
	}, "SELECT "+entryCols+" FROM dalv_entries WHERE part = $1 AND key = $2", r.part, []byte(key))
	if err != nil {
		return store.Entry{}, false, fmt.Errorf("get %s %q: %w", r.p, key, err)
	}
	return e, ok, nil
}

// page reads one page of entries.
func (r *reader) page(limit int, sql string, args ...any) ([]store.Entry, int, error) {
	var es []store.Entry
	bytes := 0
	err := r.query(func(rows pgx.Rows) error {
		for rows.Next() {
			e, n, err := scanEntry(rows)
			if err != nil {
				return err
			}
			es = append(es, e)
			bytes += n
		}
		return nil
	}, sql, append(args, limit)...)
	return es, bytes, err
}

// nextLimit sizes the page after one of n rows and size bytes.
func nextLimit(limit, size int) int {
	switch {
	case size > maxPageBytes && limit > minPage:
		return limit / 2
	case size < maxPageBytes/4 && limit < maxPage:
		return limit * 2
	}
	return limit
}

// Changes implements store.Reader.
func (r *reader) Changes(after uint64, fn func(store.Entry) (bool, error)) error {
	if after >= math.MaxInt64 || r.headRead && after >= r.head.Version {
		return nil // nothing was committed after the head
	}
	if r.pf.complete() {
		return r.pf.changes(after, fn)
	}
	limit := minPage
	es, size, err := r.page(limit, "SELECT "+entryCols+` FROM dalv_entries
		WHERE part = $1 AND version > $2 ORDER BY version, key LIMIT $3`, r.part, int64(after))
	for {
		if err != nil {
			return fmt.Errorf("changes %s: %w", r.p, err)
		}
		for _, e := range es {
			if more, err := fn(e); err != nil || !more {
				return err
			}
		}
		if len(es) < limit {
			return nil
		}
		last := es[len(es)-1]
		limit = nextLimit(limit, size)
		es, size, err = r.page(limit, "SELECT "+entryCols+` FROM dalv_entries
			WHERE part = $1 AND (version, key) > ($2, $3) ORDER BY version, key LIMIT $4`,
			r.part, int64(last.Version), []byte(last.Key))
	}
}

// changes answers Changes from a complete read ahead.
func (pf *prefetch) changes(after uint64, fn func(store.Entry) (bool, error)) error {
	es := make([]store.Entry, 0, len(pf.entries))
	for _, e := range pf.entries {
		if e.Version > after {
			es = append(es, e)
		}
	}
	return changesInOrder(es, fn)
}

// changesInOrder hands copies of es to fn as Changes does: by version, then
// key. It sorts es.
func changesInOrder(es []store.Entry, fn func(store.Entry) (bool, error)) error {
	slices.SortFunc(es, func(a, b store.Entry) int {
		if c := cmp.Compare(a.Version, b.Version); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	for _, e := range es {
		if more, err := fn(cloneEntry(e)); err != nil || !more {
			return err
		}
	}
	return nil
}

// Scan implements store.Reader.
func (r *reader) Scan(prefix, startAfter string, fn func(store.Entry) (bool, error)) error {
	if r.pf.complete() {
		return r.pf.scanKeys(prefix, startAfter, fn)
	}
	start, end := scanBounds(prefix, startAfter)
	limit := minPage
	for {
		es, size, err := r.page(limit, "SELECT "+entryCols+` FROM dalv_entries
			WHERE part = $1 AND key >= $2 AND ($3::bytea IS NULL OR key < $3) AND tomb_nanos IS NULL
			ORDER BY key LIMIT $4`, r.part, start, end)
		if err != nil {
			return fmt.Errorf("scan %s: %w", r.p, err)
		}
		for _, e := range es {
			if more, err := fn(e); err != nil || !more {
				return err
			}
		}
		if len(es) < limit {
			return nil
		}
		start = append([]byte(es[len(es)-1].Key), 0)
		limit = nextLimit(limit, size)
	}
}

// scanBounds returns the first key Scan(prefix, startAfter) may return and
// the key past the last (nil for no bound).
func scanBounds(prefix, startAfter string) (start, end []byte) {
	start = []byte(prefix)
	if startAfter >= prefix {
		start = append([]byte(startAfter), 0) // the first key after startAfter
	}
	return start, store.PrefixEnd([]byte(prefix))
}

// scanKeys answers Scan from a complete read ahead.
func (pf *prefetch) scanKeys(prefix, startAfter string, fn func(store.Entry) (bool, error)) error {
	start, end := scanBounds(prefix, startAfter)
	for _, e := range pf.entries {
		k := []byte(e.Key)
		if e.Deleted || bytes.Compare(k, start) < 0 || end != nil && bytes.Compare(k, end) >= 0 {
			continue
		}
		if more, err := fn(cloneEntry(e)); err != nil || !more {
			return err
		}
	}
	return nil
}

// deviceBatch returns the read-ahead batch of device: known is false when
// only a query can tell.
func (pf *prefetch) deviceBatch(device string) (batch uint64, known bool) {
	if pf == nil || !pf.hasDevices {
		return 0, false
	}
	if b, ok := pf.devices[device]; ok {
		return b, true
	}
	return 0, pf.devicesAll
}

// DeviceBatch implements store.Reader.
func (r *reader) DeviceBatch(device string) (uint64, error) {
	if b, known := r.pf.deviceBatch(device); known {
		return b, nil
	}
	var batch int64
	err := r.query(func(rows pgx.Rows) error {
		for rows.Next() {
			if err := rows.Scan(&batch); err != nil {
				return err
			}
		}
		return nil
	}, "SELECT batch FROM dalv_devices WHERE part = $1 AND device = $2", r.part, []byte(device))
	if err != nil {
		return 0, fmt.Errorf("device batch %s %q: %w", r.p, device, err)
	}
	return uint64(batch), nil
}

// IdempotencyKey implements store.Reader.
func (r *reader) IdempotencyKey(key string) (store.KeyRecord, bool, error) {
	var (
		rec store.KeyRecord
		ok  bool
	)
	err := r.query(func(rows pgx.Rows) error {
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v, &rec.Digest); err != nil {
				return err
			}
			rec.Version, ok = uint64(v), true
		}
		return nil
	}, "SELECT version, digest FROM dalv_idempotency_keys WHERE part = $1 AND key = $2", r.part, []byte(key))
	if err != nil {
		return store.KeyRecord{}, false, fmt.Errorf("idempotency key %s %q: %w", r.p, key, err)
	}
	return rec, ok, nil
}

// View implements [store.Store]: fn reads one REPEATABLE READ READ ONLY
// transaction, begun with fn's first read.
func (s *Store) View(ctx context.Context, p store.Partition, fn func(r store.Reader) error) error {
	if err := s.gate.EnterPartition(ctx, p); err != nil {
		return err
	}
	defer s.gate.Exit()
	octx, stop := s.opContext(ctx)
	defer stop()
	conn, err := s.acquire(ctx, octx)
	if err != nil {
		return fmt.Errorf("view %s: %w", p, err)
	}
	r := &reader{ctx: octx, caller: ctx, conn: conn, p: p, part: partID(p), begin: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
		readAhead: !s.hooks.noReadAhead, askStandbys: s.streams == nil && s.askStandbys()}
	ended := false
	defer func() {
		if !ended {
			// fn panicked (and an HTTP server may recover and carry on):
			// the connection goes back all the same, and the pool drops
			// it if it is left in the transaction.
			conn.Release()
		}
	}()
	err = fn(r)
	ended = true
	switch {
	case !r.begun || conn.Conn().IsClosed():
		conn.Release()
	case err != nil:
		_, _ = conn.Exec(octx, "ROLLBACK")
		conn.Release() // the pool drops a connection left in a transaction
	default:
		// Every read of the snapshot is in, and a read-only transaction's
		// COMMIT can neither change nor fail them: end it without making
		// the caller wait a round trip (a watch delivers sooner).
		// (Once Close has begun, the View ends it before returning.)
		if s.gate.Enter() != nil {
			s.endView(conn)
			break
		}
		go func() {
			defer s.gate.Exit()
			s.endView(conn)
		}()
		// What was read is told only once the synchronous standbys have it
		// (see standbys.go). The connection is given back first, so that
		// waiting Views never hold the connections the wait needs.
		if s.streams == nil && s.knowStandbys(r) {
			if err := s.waitStandbys(octx); err != nil {
				return fmt.Errorf("view %s: %w", p, storeErr(octx, err))
			}
		}
	}
	return err
}

// endView commits a View's transaction and gives its connection back (or
// closes it, when the COMMIT fails).
func (s *Store) endView(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), max(s.timeout, time.Second))
	defer cancel()
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		_ = conn.Conn().Close(ctx)
	}
	conn.Release()
}
