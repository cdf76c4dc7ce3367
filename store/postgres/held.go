package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dalvdb/dalv/store"
)

// A store keeps the state of small partitions it committed to: the head,
// every entry and every device record, as the prefetch reads them. An
// Update of a partition it holds runs fn on that state, with no round trip,
// and writes the commit in a statement (shared with the other commits that
// wait for it: see group.go) whose first step locks and updates the head
// only if it is still the state's (version, horizon and compactions): the
// statement then holds the head row's lock, as an Update's transaction
// does, and writes what fn decided on the partition as it is. If another
// process committed in between, the statement writes nothing for it, and
// the Update drops the state and runs as a transaction. A sync to a
// partition only this process writes is then one round trip instead of two.

// held is a store's way of committing to the partitions whose state it
// holds: the states, the group that writes commits on them, and the counts
// of both.
type held struct {
	s      *Store
	states *stateCache

	// The groups (see group.go): the commits, and the reads of what sparse
	// states lack.
	commits batcher[*heldCommit]
	reads   batcher[*sparseRead]
	mu      sync.Mutex
	parts   map[string]*heldCommit // the commits queued or in flight, by partition

	// committed and moved count the commits tried on held states that
	// committed, and those that found the head moved on; statements the
	// statements that wrote them; readStatements the statements that read
	// what sparse states lacked, and readsDone the reads in them.
	committed, moved, statements, readStatements, readsDone atomic.Int64
}

func newHeld(s *Store, budget int) *held {
	h := &held{s: s, states: newStateCache(budget, s.now), parts: make(map[string]*heldCommit)}
	h.commits = batcher[*heldCommit]{size: func(hc *heldCommit) int { return hc.row.size }, run: h.runCommits}
	h.reads = batcher[*sparseRead]{size: (*sparseRead).size, run: h.runReads}
	return h
}

// update makes an Update's attempt on the state held of part, if any. done
// is false when the Update must run as a transaction instead: no state is
// held, fn read past it, or the head moved on. Otherwise err is the
// Update's outcome.
func (h *held) update(ctx context.Context, p store.Partition, part string,
	fn func(r store.Reader) (*store.Commit, error)) (version uint64, done bool, err error) {
	st := h.states.get(part)
	for reads, moved := 0, 0; st != nil; {
		r := &heldReader{p: p, st: st}
		c, row, done, err := commitOnState(ctx, p, part, r, fn)
		if r.missed() {
			// A sparse state lacked what fn asked for: read it, and run fn
			// again on what was read.
			if reads++; reads > sparseReads {
				return 0, false, nil
			}
			if st, err = h.readMissing(p, part, st, r.keys, r.devices); err != nil {
				if readRefused(err) {
					return 0, false, nil // nothing was done: the transaction tells its own error
				}
				return 0, true, err
			}
			h.states.hold(part, st)
			continue
		}
		if c == nil {
			return 0, done, err
		}
		hc := &heldCommit{p: p, st: st, c: c, row: row}
		h.commit(hc)
		switch hc.outcome {
		case heldCommitted:
			return c.Version, true, nil
		case heldFailed:
			return 0, true, hc.err
		case heldBusy:
			// Another sync of this process commits to the partition (two
			// devices of a user): once it has, go on from the state it
			// leaves.
			<-hc.after
			st = h.states.get(part)
		case heldMoved:
			// This process committed to the partition meanwhile, as a
			// transaction: go on from the state that left, a few times.
			if moved++; hc.next == nil || moved == maxAttempts {
				return 0, false, nil
			}
			st = hc.next
		default:
			return 0, false, nil
		}
	}
	return 0, false, nil
}

// commitOnState runs fn on r's state of part, and returns the commit it
// decided on, as a row. It returns no commit, and done false, when the
// Update must run as a transaction instead: fn read past the state (or
// asked a sparse state for what it lacks: see r.missed), or decided
// something other than a commit that a state can take. It returns no commit
// and done true when the Update fails with err.
func commitOnState(ctx context.Context, p store.Partition, part string, r *heldReader,
	fn func(r store.Reader) (*store.Commit, error)) (c *store.Commit, row *commitRow, done bool, err error) {
	c, err = fn(r)
	if err != nil || c == nil || c.Erase || c.IdempotencyKey != "" || r.missed() {
		// What fn decided without a commit may rest on a state another
		// process has moved past (an answer, a refusal): only a commit is
		// checked against the head. These, erases, and commits under an
		// idempotency key (a held state has no key records) take the
		// transaction's way. What fn decided on a sparse state's stand-in
		// answers is of no use.
		return nil, nil, false, nil
	}
	if row, err = newCommitRow(part, r.st.head, c); err != nil {
		return nil, nil, true, fmt.Errorf("commit %s version %d: %w", p, c.Version, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, true, err
	}
	return c, row, true, nil
}

// errNeedLock ends fn's run on a held state when fn reads what the state
// does not hold; the Update runs as a transaction instead.
var errNeedLock = errors.New("postgres store: the read needs the partition's lock")

// heldReader is the store.Reader of an Update's attempt on a held state: it
// answers from the state, and with errNeedLock what the state does not hold.
// Of a sparse state, it answers a key or a device record it does not know
// as absent, and notes it in keys or devices: the attempt then reads them
// (see held.update).
type heldReader struct {
	p             store.Partition
	st            *partState
	keys, devices []string
}

// missed reports whether r answered a read it did not know the answer to.
func (r *heldReader) missed() bool { return len(r.keys)+len(r.devices) > 0 }

// Head implements store.Reader.
func (r *heldReader) Head() (store.Head, error) { return r.st.head, nil }

// Get implements store.Reader.
func (r *heldReader) Get(key string) (store.Entry, bool, error) {
	if sp := r.st.sp; sp != nil {
		if e, ok, known := sp.entry(key); known {
			return e, ok, nil
		}
		if !slices.Contains(r.keys, key) {
			r.keys = append(r.keys, key)
		}
		return store.Entry{}, false, nil
	}
	if e, ok, known := r.st.pf.entry(key); known {
		return e, ok, nil
	}
	return store.Entry{}, false, errNeedLock
}

// Changes implements store.Reader.
func (r *heldReader) Changes(after uint64, fn func(store.Entry) (bool, error)) error {
	if after >= math.MaxInt64 || after >= r.st.head.Version {
		return nil // nothing was committed after the head
	}
	if sp := r.st.sp; sp != nil {
		if after < sp.floor {
			return errNeedLock
		}
		return sp.changes(after, fn)
	}
	return r.st.pf.changes(after, fn)
}

// Scan implements store.Reader.
func (r *heldReader) Scan(prefix, startAfter string, fn func(store.Entry) (bool, error)) error {
	if r.st.sp != nil {
		return errNeedLock
	}
	return r.st.pf.scanKeys(prefix, startAfter, fn)
}

// DeviceBatch implements store.Reader.
func (r *heldReader) DeviceBatch(device string) (uint64, error) {
	if sp := r.st.sp; sp != nil {
		if b, known := sp.devices[device]; known {
			return b, nil
		}
		if !slices.Contains(r.devices, device) {
			r.devices = append(r.devices, device)
		}
		return 0, nil
	}
	if b, known := r.st.pf.deviceBatch(device); known {
		return b, nil
	}
	return 0, errNeedLock
}

// IdempotencyKey implements store.Reader: a held state has no key records.
func (r *heldReader) IdempotencyKey(key string) (store.KeyRecord, bool, error) {
	return store.KeyRecord{}, false, errNeedLock
}
