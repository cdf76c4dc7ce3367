package postgres

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dalvdb/dalv/store"
)

// DefaultCacheBytes bounds the partition states a store keeps (see
// Options.CacheBytes).
const DefaultCacheBytes = 32 << 20

// coolDown is how long a store holds no state of a partition after another
// process committed to it under its held state: while several nodes take
// turns on a partition (a load balancer that spreads one device's requests),
// each held commit would cost a wasted statement before the transaction.
const coolDown = 10 * time.Second

// partState is a held partition state. It is never changed: a commit makes
// a new one. A state holds the whole partition (pf) or part of it (sp: see
// sparse.go). A state with neither holds nothing: it marks a partition
// whose state is not to be held until cool, or, when moved is false, whose
// whole state is not (the partition was found too big) while a sparse
// state may be.
type partState struct {
	head        store.Head
	compactions int64
	stream      string    // on Citus, the feed stream of the partition's shard
	pf          *prefetch // complete: every entry and device record
	sp          *sparse
	size        int
	cool        time.Time
	moved       bool // the mark of another process's commit under a held state
}

// holds reports whether st holds a state, whole or sparse, rather than
// marking a cool-down.
func (st *partState) holds() bool { return st != nil && (st.pf != nil || st.sp != nil) }

// cooling reports whether st marks a cool-down that has not ended at now.
func (st *partState) cooling(now time.Time) bool {
	return st != nil && !st.holds() && now.Before(st.cool)
}

// stateCache holds partition states up to a byte budget; past it, states
// are dropped at random (Go's map order), which keeps a bounded set of
// partitions without bookkeeping on the hot path.
type stateCache struct {
	budget  int
	coolFor time.Duration    // how long coolDown holds no state; 0 for not at all
	now     func() time.Time // the store's clock

	mu    sync.Mutex
	parts map[string]*partState
	size  int
	txs   map[string]int // the transactions in flight, by partition
}

func newStateCache(budget int, now func() time.Time) *stateCache {
	return &stateCache{budget: budget, coolFor: coolDown, now: now, parts: make(map[string]*partState), txs: make(map[string]int)}
}

// len returns how many states c holds.
func (c *stateCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, st := range c.parts {
		if st.holds() {
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
	if st := c.parts[part]; st.holds() {
		return st
	}
	return nil
}

// hold holds st for part, unless part cools down or the state held is of a
// later version; with st nil, it forgets part's state (a cool-down stays).
// A partition found too big to hold whole may hold a sparse state while it
// cools down; one that another process committed to holds none.
func (c *stateCache) hold(part string, st *partState) {
	if c.budget <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.parts[part]
	if old.cooling(c.now()) && (st == nil || st.sp == nil || old.moved) {
		return
	}
	if old.holds() && st != nil && st.head.Version < old.head.Version {
		return // a commit that finished late: the state held is later
	}
	c.putLocked(part, st)
}

// readAheadRows is how many entries, and device records, an Update of part
// reads ahead: holdRows, so that the state can be held, unless part cools
// down (see coolDown and markTooBig), has a sparse state (it was found too
// big), or no state is held at all.
func (c *stateCache) readAheadRows(part string) int {
	if c.budget <= 0 {
		return prefetchRows
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.parts[part]; old.cooling(c.now()) || old != nil && old.sp != nil {
		return prefetchRows
	}
	return holdRows
}

// markTooBig notes that pf, read ahead of part up to holdRows, found more
// than a state may hold: for c.coolFor the partition's Updates read only
// prefetchRows ahead, which is all a partition that size gains from.
func (c *stateCache) markTooBig(part string, pf *prefetch) {
	if pf != nil && pf.rows == holdRows && pf.tooBig() {
		c.mark(part, false)
	}
}

// coolDown forgets part's state and holds none for c.coolFor: another
// process committed to it.
func (c *stateCache) coolDown(part string) { c.mark(part, true) }

// movedOn notes that a commit on st found part's head moved on, and returns
// the state held now if it is later than st: this process committed
// meanwhile, as a transaction (a backend's commit under an idempotency key,
// say), and its commits go on from there. While a transaction of this
// process on part is in flight, it may be the one that moved the head, and
// will hold the state it leaves. Else another process committed, and part
// cools down.
func (c *stateCache) movedOn(part string, st *partState) *partState {
	if c.budget <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.parts[part]; cur.holds() && cur.head.Version > st.head.Version {
		return cur
	}
	if c.txs[part] > 0 {
		c.putLocked(part, nil)
		return nil
	}
	c.markLocked(part, true)
	return nil
}

// txBegins notes a transaction of this process on part (see movedOn); the
// caller calls txEnds once it has held the state it leaves.
func (c *stateCache) txBegins(part string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.txs[part]++
}

// txEnds notes the end of a transaction txBegins noted.
func (c *stateCache) txEnds(part string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.txs[part]--; c.txs[part] <= 0 {
		delete(c.txs, part)
	}
}

// mark forgets part's state and marks a cool-down of c.coolFor, of held
// states of every kind when moved, else of whole ones.
func (c *stateCache) mark(part string, moved bool) {
	if c.budget <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.markLocked(part, moved)
}

// markLocked is mark with c.mu held.
func (c *stateCache) markLocked(part string, moved bool) {
	if c.coolFor <= 0 {
		c.putLocked(part, nil)
		return
	}
	c.putLocked(part, &partState{size: 64 + len(part), cool: c.now().Add(c.coolFor), moved: moved})
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
// not be held: st is nil, c erases, or the partition grew past what a
// held state may have (holdRows of each, holdBytes of values).
func (st *partState) after(c *store.Commit) *partState {
	if st == nil || c.Erase {
		return nil
	}
	if st.sp != nil {
		sp := st.sp.clone()
		sp.apply(c)
		return sp.state(store.Head{Version: c.Version, Horizon: st.head.Horizon}, st.compactions)
	}
	pf := &prefetch{hasDevices: true, devicesAll: true, entriesAll: true,
		entries: slices.Clone(st.pf.entries), devices: st.pf.devices}
	for _, e := range c.Entries {
		if !e.Deleted && len(e.Value) > prefetchValue {
			return nil
		}
		e = heldEntry(e)
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
	if len(pf.entries) > holdRows || len(pf.devices) > holdRows || pf.valueBytes() > holdBytes {
		return nil
	}
	return &partState{head: store.Head{Version: c.Version, Horizon: st.head.Horizon}, compactions: st.compactions,
		stream: st.stream, pf: pf, size: pf.size()}
}

// heldEntry is a commit's entry as a state holds it: a copy, and a live
// entry with a value, if an empty one, as a read finds it.
func heldEntry(e store.Entry) store.Entry {
	e.Value = slices.Clone(e.Value)
	if !e.Deleted && e.Value == nil {
		e.Value = []byte{}
	}
	return e
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

// valueBytes is the size of the values in pf's entries.
func (pf *prefetch) valueBytes() int {
	n := 0
	for _, e := range pf.entries {
		n += len(e.Value)
	}
	return n
}

// holdable reports whether pf holds the whole partition, as a state must.
func (pf *prefetch) holdable() bool {
	return pf.complete() && pf.hasDevices && pf.devicesAll
}
