package postgres

import (
	"context"
	"fmt"
	"math"

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

// reader is the store.Reader of one Update or View: its statements run on
// one connection, in one transaction. In a View, the transaction begins with
// the first statement, sent together with it.
type reader struct {
	ctx  context.Context
	conn *pgxpool.Conn
	p    store.Partition
	part string

	begin string // the BEGIN still to send with the first statement
	begun bool

	headRead bool // in an Update, the locked head
	head     store.Head
}

// query runs sql and hands its rows to scan, which must read them all
// (without calling back into the reader).
func (r *reader) query(scan func(pgx.Rows) error, sql string, args ...any) error {
	if r.begin != "" {
		b := &pgx.Batch{}
		b.Queue(r.begin)
		b.Queue(sql, args...).Query(scan)
		r.begin, r.begun = "", true
		return storeErr(r.ctx, r.conn.SendBatch(r.ctx, b).Close())
	}
	rows, err := r.conn.Query(r.ctx, sql, args...)
	if err != nil {
		return storeErr(r.ctx, err)
	}
	err = scan(rows)
	rows.Close()
	if err == nil {
		err = rows.Err()
	}
	return storeErr(r.ctx, err)
}

// Head implements store.Reader.
func (r *reader) Head() (store.Head, error) {
	if r.headRead {
		return r.head, nil
	}
	var h store.Head
	err := r.query(func(rows pgx.Rows) error {
		for rows.Next() {
			var v, hz int64
			if err := rows.Scan(&v, &hz); err != nil {
				return err
			}
			h = store.Head{Version: uint64(v), Horizon: uint64(hz)}
		}
		return nil
	}, "SELECT version, horizon FROM dalv_heads WHERE part = $1", r.part)
	if err != nil {
		return store.Head{}, fmt.Errorf("head %s: %w", r.p, err)
	}
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
	if after >= math.MaxInt64 {
		return nil
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

// Scan implements store.Reader.
func (r *reader) Scan(prefix, startAfter string, fn func(store.Entry) (bool, error)) error {
	start := []byte(prefix)
	if startAfter >= prefix {
		start = append([]byte(startAfter), 0) // the first key after startAfter
	}
	end := prefixEnd([]byte(prefix)) // nil: no upper bound
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

// DeviceBatch implements store.Reader.
func (r *reader) DeviceBatch(device string) (uint64, error) {
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

// prefixEnd returns the smallest byte string above every one that starts
// with prefix, or nil when there is none (prefix is empty or all 0xff).
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// View implements [store.Store]: fn reads one REPEATABLE READ READ ONLY
// transaction, begun with fn's first read.
func (s *Store) View(ctx context.Context, p store.Partition, fn func(r store.Reader) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.active.Done()
	if err := ctx.Err(); err != nil {
		return err
	}
	if p.Name == "" {
		return errEmptyPartition
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("view %s: %w", p, storeErr(ctx, err))
	}
	defer conn.Release()
	r := &reader{ctx: ctx, conn: conn, p: p, part: partID(p), begin: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"}
	err = fn(r)
	if r.begun && !conn.Conn().IsClosed() {
		end := "COMMIT"
		if err != nil {
			end = "ROLLBACK"
		}
		if _, cerr := conn.Exec(ctx, end); cerr != nil && err == nil {
			err = fmt.Errorf("view %s: %w", p, storeErr(ctx, cerr))
		}
	}
	return err
}
