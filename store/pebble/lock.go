package pebble

import (
	"sync"

	"github.com/dalvdb/dalv/store"
)

// lockTable serialises Updates (and Compact) per partition. It holds one
// mutex per partition that someone holds or waits for, and forgets it when
// the last one leaves, so unrelated partitions never share a mutex and the
// table stays as small as the number of partitions in use.
type lockTable struct {
	mu    sync.Mutex
	locks map[store.Partition]*partitionLock
	free  sync.Pool // of *partitionLock
}

// partitionLock is one partition's mutex. refs counts holders and waiters
// and is guarded by lockTable.mu.
type partitionLock struct {
	mu sync.Mutex
	// commit is held by an Update while its batch commits (Pebble shows a
	// batch to reads before its fsync ends) and by a View while it takes
	// its snapshot, so no View sees a commit that is not synced yet.
	commit sync.RWMutex
	refs   int
}

// lock locks p and returns its lock, for unlock.
func (t *lockTable) lock(p store.Partition) *partitionLock {
	l := t.ref(p)
	l.mu.Lock()
	return l
}

// snapshot calls take while no commit of p is in flight.
func (t *lockTable) snapshot(p store.Partition, take func()) {
	l := t.ref(p)
	l.commit.RLock()
	take()
	l.commit.RUnlock()
	t.unref(p, l)
}

// ref returns p's lock with one more reference, for unref.
func (t *lockTable) ref(p store.Partition) *partitionLock {
	t.mu.Lock()
	l := t.locks[p]
	if l == nil {
		if t.locks == nil {
			t.locks = make(map[store.Partition]*partitionLock)
		}
		l, _ = t.free.Get().(*partitionLock)
		if l == nil {
			l = new(partitionLock)
		}
		t.locks[p] = l
	}
	l.refs++
	t.mu.Unlock()
	return l
}

// unlock unlocks p, whose lock l the caller got from lock.
func (t *lockTable) unlock(p store.Partition, l *partitionLock) {
	l.mu.Unlock()
	t.unref(p, l)
}

// unref drops a reference ref gave.
func (t *lockTable) unref(p store.Partition, l *partitionLock) {
	t.mu.Lock()
	l.refs--
	if l.refs == 0 {
		delete(t.locks, p)
		t.free.Put(l)
	}
	t.mu.Unlock()
}

// len is the number of partitions locked or waited for.
func (t *lockTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.locks)
}
