package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

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

// DefaultCacheBytes bounds the partition states a store keeps (see
// Options.CacheBytes).
const DefaultCacheBytes = 32 << 20

// coolDown is how long a store holds no state of a partition after another
// process committed to it under its held state: while several nodes take
// turns on a partition (a load balancer that spreads one device's requests),
// each held commit would cost a wasted statement before the transaction.
const coolDown = 10 * time.Second

// errNeedLock ends fn's run on a held state when fn reads what the state
// does not hold; the Update runs as a transaction instead.
var errNeedLock = errors.New("postgres store: the read needs the partition's lock")

// partState is a held partition state. It is never changed: a commit makes
// a new one. A state with no pf holds nothing: it marks a partition whose
// state is not to be held until cool.
type partState struct {
	head        store.Head
	compactions int64
	pf          *prefetch // complete: every entry and device record
	size        int
	cool        time.Time
}

// stateCache holds partition states up to a byte budget; past it, states
// are dropped at random (Go's map order), which keeps a bounded set of
// partitions without bookkeeping on the hot path.
type stateCache struct {
	budget  int
	coolFor time.Duration // how long coolDown holds no state; 0 for not at all

	mu    sync.Mutex
	parts map[string]*partState
	size  int
}

func newStateCache(budget int) *stateCache {
	return &stateCache{budget: budget, coolFor: coolDown, parts: make(map[string]*partState)}
}

// len returns how many states c holds.
func (c *stateCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, st := range c.parts {
		if st.pf != nil {
			n++
		}
	}
	return n
}

// get returns the state held for part, or nil.
func (c *stateCache) get(part string) *partState {
	if c.budget <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.parts[part]; st != nil && st.pf != nil {
		return st
	}
	return nil
}

// hold holds st for part, unless part cools down or the state held is of a
// later version; with st nil, it forgets part's state (a cool-down stays).
func (c *stateCache) hold(part string, st *partState) {
	if c.budget <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.parts[part]
	if old != nil && old.pf == nil && time.Now().Before(old.cool) {
		return
	}
	if old != nil && old.pf != nil && st != nil && st.head.Version < old.head.Version {
		return // a commit that finished late: the state held is later
	}
	c.putLocked(part, st)
}

// coolDown forgets part's state and holds none for c.coolFor.
func (c *stateCache) coolDown(part string) {
	if c.budget <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.coolFor <= 0 {
		c.putLocked(part, nil)
		return
	}
	c.putLocked(part, &partState{size: 64 + len(part), cool: time.Now().Add(c.coolFor)})
}

// putLocked holds st for part, or forgets part when st is nil, dropping
// others to stay within the budget.
func (c *stateCache) putLocked(part string, st *partState) {
	if old, ok := c.parts[part]; ok {
		c.size -= old.size
		delete(c.parts, part)
	}
	if st == nil || st.size > c.budget/4 {
		return
	}
	for p, old := range c.parts {
		if c.size+st.size <= c.budget {
			break
		}
		c.size -= old.size
		delete(c.parts, p)
	}
	c.parts[part] = st
	c.size += st.size
}

// newState returns the state of a partition whose head, compactions and
// reads ahead an Update's transaction found, or nil when the reads ahead do
// not hold the whole partition.
func newState(head store.Head, compactions int64, pf *prefetch) *partState {
	if !pf.holdable() {
		return nil
	}
	return &partState{head: head, compactions: compactions, pf: pf, size: pf.size()}
}

// after returns the state the commit c leaves on st, or nil when it would
// not be held: st is nil, c erases, or the partition grew past what the
// prefetch reads.
func (st *partState) after(c *store.Commit) *partState {
	if st == nil || c.Erase {
		return nil
	}
	pf := &prefetch{hasDevices: true, devicesAll: true, entriesAll: true,
		entries: slices.Clone(st.pf.entries), devices: st.pf.devices}
	for _, e := range c.Entries {
		if !e.Deleted && len(e.Value) > prefetchValue {
			return nil
		}
		e.Value = slices.Clone(e.Value)
		if !e.Deleted && e.Value == nil {
			e.Value = []byte{}
		}
		i, found := slices.BinarySearchFunc(pf.entries, e.Key, func(x store.Entry, key string) int { return strings.Compare(x.Key, key) })
		if found {
			pf.entries[i] = e
		} else {
			pf.entries = slices.Insert(pf.entries, i, e)
		}
	}
	if c.Device != "" && pf.devices[c.Device] != c.Batch {
		devices := make(map[string]uint64, len(pf.devices)+1)
		for d, b := range pf.devices {
			devices[d] = b
		}
		devices[c.Device] = c.Batch
		pf.devices = devices
	}
	if len(pf.entries) > prefetchRows || len(pf.devices) > prefetchRows {
		return nil
	}
	return &partState{head: store.Head{Version: c.Version, Horizon: st.head.Horizon}, compactions: st.compactions, pf: pf, size: pf.size()}
}

// size is about the bytes pf takes in memory.
func (pf *prefetch) size() int {
	n := 256
	for _, e := range pf.entries {
		n += len(e.Key) + len(e.Value) + 64
	}
	for d := range pf.devices {
		n += len(d) + 48
	}
	return n
}

// holdable reports whether pf holds the whole partition, as a state must.
func (pf *prefetch) holdable() bool {
	return pf.complete() && pf.hasDevices && pf.devicesAll
}

// none reports whether no test hook is set: held states bypass them.
func (h testHooks) none() bool {
	return h.beforeLock == nil && h.beforeCommit == nil && !h.noReadAhead
}

// updateHeld makes an Update's attempt on the held state st. done is false
// when the Update must run as a transaction instead: fn read past the
// state, or the head moved on. Otherwise err is the Update's outcome.
func (s *Store) updateHeld(ctx context.Context, p store.Partition, part string, st *partState,
	fn func(r store.Reader) (*store.Commit, error)) (version uint64, done bool, err error) {
	for {
		r := &reader{ctx: ctx, caller: ctx, p: p, part: part, headRead: true, head: st.head, pf: st.pf}
		c, err := fn(r)
		if err != nil || c == nil || c.Erase || c.IdempotencyKey != "" {
			// What fn decided without a commit may rest on a state another
			// process has moved past (an answer, a refusal): only a commit is
			// checked against the head. These, erases, and commits under an
			// idempotency key (a held state has no key records) take the
			// transaction's way.
			return 0, false, nil
		}
		row, err := newCommitRow(part, st.head, c)
		if err != nil {
			return 0, true, fmt.Errorf("commit %s version %d: %w", p, c.Version, err)
		}
		if err := ctx.Err(); err != nil {
			return 0, true, err
		}
		hc := &heldCommit{p: p, st: st, c: c, row: row}
		s.group.commit(hc)
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
			if st = s.states.get(part); st == nil {
				return 0, false, nil
			}
		default:
			return 0, false, nil
		}
	}
}
