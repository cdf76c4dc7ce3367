package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dalvdb/dalv/store"
)

// A partition too big to hold whole (more than holdRows entries or device
// records, or more than holdBytes of values) commits in grouped statements
// too, on a sparse state: its head, the entries and device records the
// process wrote or read at that head, and every entry changed after a floor
// version. A commit's own entries are all changed after the version before
// it, so a transaction's commit leaves such a state, and each commit on it
// keeps it whole. An Update runs fn on the sparse state; what fn asks for
// that the state does not know is answered as absent, so that one run finds
// all of it, then read in one statement, which is a snapshot of its own, with
// the head (readSparse); fn then runs again on what it read. Its commit is
// written as any held state's is: only if the head is still the one the
// state was read at. A sync to a big partition is so two round trips, the
// read and its share of a grouped statement, where a transaction is two
// round trips and a WAL flush of its own; a sync whose keys the process
// wrote a moment before is one. What fn reads that a sparse state cannot
// answer (changes before its floor, a scan, an idempotency key) makes the
// Update a transaction.

// sparse is what a sparse state knows of its partition, at its head.
type sparse struct {
	floor   uint64            // every entry changed after floor is in entries
	entries []knownEntry      // in key order
	devices map[string]uint64 // device records known; 0 for a device with none
}

// knownEntry is an entry a sparse state knows: the key's entry, or that the
// partition has none.
type knownEntry struct {
	e      store.Entry
	absent bool
}

// sparseReads bounds how many times an Update reads what a sparse state
// lacks before it runs as a transaction: one read finds what fn asks for,
// unless the head moved in between and fn then asks for more.
const sparseReads = 2

// newSparse returns the sparse state that commit c leaves on a partition at
// head, with compactions, or nil when it erases or holds more than a sparse
// state may (see sparse.state).
func newSparse(head store.Head, compactions int64, c *store.Commit) *partState {
	if c.Erase {
		return nil
	}
	sp := &sparse{floor: head.Version}
	sp.apply(c)
	return sp.state(store.Head{Version: c.Version, Horizon: head.Horizon}, compactions)
}

// afterCommit returns the state commit c leaves on a partition whose state
// before it was st (nil when none was held) at head, with compactions: st's
// own next state, or a sparse state when the partition is too big to hold
// whole. (On Citus, where states are read for each Update, there are no
// sparse states: the caller uses st.after.)
func afterCommit(st *partState, head store.Head, compactions int64, c *store.Commit) *partState {
	if next := st.after(c); next != nil || c.Erase {
		return next
	}
	if st != nil && st.sp != nil {
		// Past the bounds: the state starts over from this commit.
		return newSparse(st.head, st.compactions, c)
	}
	return newSparse(head, compactions, c)
}

// apply writes c's entries and device record into sp, which must be a copy
// of its own.
func (sp *sparse) apply(c *store.Commit) {
	for _, e := range c.Entries {
		sp.put(knownEntry{e: heldEntry(e)})
	}
	if c.Device != "" {
		if sp.devices == nil {
			sp.devices = make(map[string]uint64, 1)
		}
		sp.devices[c.Device] = c.Batch
	}
}

// find returns where key is, or would be, in sp.entries, and whether it is.
func (sp *sparse) find(key string) (int, bool) {
	return slices.BinarySearchFunc(sp.entries, key, func(x knownEntry, key string) int { return strings.Compare(x.e.Key, key) })
}

// put sets what sp knows of ke's key.
func (sp *sparse) put(ke knownEntry) {
	i, found := sp.find(ke.e.Key)
	if found {
		sp.entries[i] = ke
	} else {
		sp.entries = slices.Insert(sp.entries, i, ke)
	}
}

// clone returns a copy of sp to change.
func (sp *sparse) clone() *sparse {
	devices := make(map[string]uint64, len(sp.devices)+1)
	for d, b := range sp.devices {
		devices[d] = b
	}
	return &sparse{floor: sp.floor, entries: slices.Clone(sp.entries), devices: devices}
}

// state returns the state of sp at head, or nil when sp is past the bounds
// of a held state: holdRows entries (absent ones included) or device
// records, holdBytes of values.
func (sp *sparse) state(head store.Head, compactions int64) *partState {
	size, values := 256, 0
	for _, ke := range sp.entries {
		size += len(ke.e.Key) + len(ke.e.Value) + 64
		values += len(ke.e.Value)
	}
	for d := range sp.devices {
		size += len(d) + 48
	}
	if len(sp.entries) > holdRows || len(sp.devices) > holdRows || values > holdBytes {
		return nil
	}
	return &partState{head: head, compactions: compactions, sp: sp, size: size}
}

// entry returns what sp knows of key: known is false when only a read can
// tell.
func (sp *sparse) entry(key string) (e store.Entry, ok, known bool) {
	i, found := sp.find(key)
	if !found {
		return store.Entry{}, false, false
	}
	if sp.entries[i].absent {
		return store.Entry{}, false, true
	}
	return cloneEntry(sp.entries[i].e), true, true
}

// changes answers Changes(after) for after at or above sp's floor.
func (sp *sparse) changes(after uint64, fn func(store.Entry) (bool, error)) error {
	var es []store.Entry
	for _, ke := range sp.entries {
		if !ke.absent && ke.e.Version > after {
			es = append(es, ke.e)
		}
	}
	return changesInOrder(es, fn)
}

// readSparse reads, in one statement, the heads of a group of partitions
// and the entries and device records of keys and devices in each: one
// statement reads one snapshot. Its parameters are the partitions, then
// the keys and the devices, each naming its partition by position (from
// 1). Each row gives the position, then its kind: 0 a head (key NULL,
// version, horizon in the scalar version's column, compactions), 1 an
// entry, 2 a device record (version the batch).
const readSparse = `WITH q AS (SELECT * FROM unnest($1::text[]) WITH ORDINALITY AS q(part, ix))
SELECT q.ix, 0, NULL::bytea, h.version, h.horizon, NULL::bytea, false, h.compactions
	FROM q JOIN dalv_heads h ON h.part = q.part
UNION ALL
SELECT q.ix, 1, e.key, e.version, e.scalar_version, e.value, e.tomb_nanos IS NOT NULL, 0
	FROM unnest($2::bigint[], $3::bytea[]) AS t(ix, key) JOIN q ON q.ix = t.ix
	JOIN dalv_entries e ON e.part = q.part AND e.key = t.key
UNION ALL
SELECT q.ix, 2, d.device, d.batch, 0, NULL, false, 0
	FROM unnest($4::bigint[], $5::bytea[]) AS t(ix, device) JOIN q ON q.ix = t.ix
	JOIN dalv_devices d ON d.part = q.part AND d.device = t.device`

// sparseRead is one Update's read of what its sparse state lacked, as it
// waits for and then learns its group's outcome.
type sparseRead struct {
	part          string
	keys, devices []string
	done          chan struct{} // closed when the fields below are set

	head        store.Head
	compactions int64
	entries     []store.Entry
	batches     map[string]uint64
	err         error
}

// size is about the bytes r adds to a statement.
func (r *sparseRead) size() int {
	n := len(r.part) + 16
	for _, k := range r.keys {
		n += len(k) + 16
	}
	for _, d := range r.devices {
		n += len(d) + 16
	}
	return n
}

// readMissing reads what fn asked a sparse state st of part for and st did
// not know (keys and devices), in the next statement of reads, and returns
// the state that knows it: st's, or, when another process committed since
// st's head, a state at the head it read.
func (h *held) readMissing(p store.Partition, part string, st *partState, keys, devices []string) (*partState, error) {
	r := &sparseRead{part: part, keys: keys, devices: devices, done: make(chan struct{}), batches: make(map[string]uint64, len(devices))}
	h.reads.add(r)
	<-r.done
	if r.err != nil {
		return nil, fmt.Errorf("update %s: read: %w", p, r.err)
	}
	known := func(sp *sparse) *partState {
		for _, k := range keys {
			sp.put(knownEntry{e: store.Entry{Key: k}, absent: true})
		}
		for _, e := range r.entries {
			sp.put(knownEntry{e: e})
		}
		for _, d := range devices {
			sp.devices[d] = r.batches[d]
		}
		return sp.state(r.head, r.compactions)
	}
	// The state the read adds to, unless another process committed since
	// st's head, or it would pass the bounds: then one of the read alone.
	if r.head == st.head && r.compactions == st.compactions {
		if next := known(st.sp.clone()); next != nil {
			return next, nil
		}
	}
	return known(&sparse{floor: r.head.Version, devices: make(map[string]uint64, len(devices))}), nil
}

// runReads reads batch in one statement, and hands each read its outcome.
// The statement runs under the store's timeout alone: it is no one
// caller's.
func (h *held) runReads(batch []*sparseRead) {
	defer func() {
		for _, r := range batch {
			close(r.done)
		}
	}()
	parts := make([]string, len(batch))
	var (
		kix, dix   []int64
		keys, devs [][]byte
	)
	for i, r := range batch {
		parts[i] = r.part
		for _, k := range r.keys {
			kix, keys = append(kix, int64(i+1)), append(keys, []byte(k))
		}
		for _, d := range r.devices {
			dix, devs = append(dix, int64(i+1)), append(devs, []byte(d))
		}
	}
	b := &pgx.Batch{}
	b.Queue(readSparse, parts, kix, keys, dix, devs).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var (
				ix, kind, v, sv, comps int64
				key, val               []byte
				deleted                bool
			)
			if err := rows.Scan(&ix, &kind, &key, &v, &sv, &val, &deleted, &comps); err != nil {
				return err
			}
			if ix < 1 || ix > int64(len(batch)) {
				return fmt.Errorf("the statement returned read %d of %d", ix, len(batch))
			}
			r := batch[ix-1]
			switch kind {
			case 0:
				r.head, r.compactions = store.Head{Version: uint64(v), Horizon: uint64(sv)}, comps
			case 1:
				e := store.Entry{Key: string(key), Version: uint64(v), ScalarVersion: uint64(sv), Deleted: deleted}
				if !deleted {
					if val == nil {
						val = []byte{}
					}
					e.Value = val
				}
				r.entries = append(r.entries, e)
			case 2:
				r.batches[string(key)] = uint64(v)
			}
		}
		return rows.Err()
	})
	send := func() error { return h.s.sendBatch(context.Background(), b) }
	if h.s.hooks.failRead != nil {
		send = h.s.hooks.failRead
	}
	if err := send(); err != nil {
		for _, r := range batch {
			r.err = err
		}
		return
	}
	h.readStatements.Add(1)
	h.readsDone.Add(int64(len(batch)))
}

// readRefused reports whether a read failed without reaching PostgreSQL,
// or was refused by it: an Update whose read so failed runs as a
// transaction, which may succeed on a connection of its own. A read that
// timed out, or lost its connection in flight, fails the Update.
func readRefused(err error) bool {
	var pgErr *pgconn.PgError
	return pgconn.SafeToRetry(err) || errors.As(err, &pgErr)
}
