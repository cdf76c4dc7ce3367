package postgres

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dalvdb/dalv/store"
)

// bigPartition commits holdRows+44 keys to p through s in one Update, and
// one more key in a second, which finds the partition too big to hold
// whole: s then holds a sparse state of p at version 2.
func bigPartition(t *testing.T, s *Store, p store.Partition) {
	t.Helper()
	c := &store.Commit{Version: 1, Time: time.Now(), Ops: []byte("ops")}
	for i := range holdRows + 44 {
		c.Entries = append(c.Entries, store.Entry{Key: fmt.Sprintf("k%03d", i), Value: []byte("seed"), Version: 1, ScalarVersion: 1})
	}
	if err := s.Update(context.Background(), p, func(store.Reader) (*store.Commit, error) { return c, nil }); err != nil {
		t.Fatal(err)
	}
	if v, _, err := commitAt(s, p, time.Now(), "", store.Entry{Key: "k000", Value: []byte("two")}); err != nil || v != 2 {
		t.Fatalf("second commit: version %d, %v", v, err)
	}
	if st := s.held.states.get(partID(p)); st == nil || st.sp == nil || st.head.Version != 2 {
		t.Fatalf("after two commits to a partition of %d keys the state held is %+v, want a sparse one at version 2", holdRows+44, st)
	}
}

// sparseMatches checks that what the sparse state st of p knows is what a
// fresh read of the store finds: each entry and device record it knows, and
// every change after its floor, which it answers Changes from.
func sparseMatches(s *Store, p store.Partition, st *partState) error {
	hr := &heldReader{p: p, st: st}
	return s.View(context.Background(), p, func(r store.Reader) error {
		if h, err := r.Head(); err != nil || h != st.head {
			return fmt.Errorf("head %+v, %v; the state holds %+v", h, err, st.head)
		}
		for _, ke := range st.sp.entries {
			e, ok, err := r.Get(ke.e.Key)
			switch {
			case err != nil:
				return err
			case ok == ke.absent || ok && fmt.Sprintf("%+v", e) != fmt.Sprintf("%+v", ke.e):
				return fmt.Errorf("key %q: the state knows %+v (absent %v), the store has %+v (%v)", ke.e.Key, ke.e, ke.absent, e, ok)
			case ok && (e.Value == nil) != e.Deleted:
				return fmt.Errorf("key %q: the state's entry has value %v and deleted %v", ke.e.Key, ke.e.Value, ke.e.Deleted)
			}
		}
		for d, b := range st.sp.devices {
			if got, err := r.DeviceBatch(d); err != nil || got != b {
				return fmt.Errorf("device %q: the state knows batch %d, the store has %d, %v", d, b, got, err)
			}
		}
		for after := st.sp.floor; after <= st.head.Version; after++ {
			var want, got []store.Entry
			collect := func(to *[]store.Entry) func(store.Entry) (bool, error) {
				return func(e store.Entry) (bool, error) { *to = append(*to, e); return true, nil }
			}
			if err := r.Changes(after, collect(&want)); err != nil {
				return err
			}
			if err := hr.Changes(after, collect(&got)); err != nil {
				return fmt.Errorf("the state's Changes(%d) at floor %d: %v", after, st.sp.floor, err)
			}
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
				return fmt.Errorf("Changes(%d): the state answers\n%+v\nthe store\n%+v", after, got, want)
			}
		}
		if st.sp.floor > 0 {
			if err := hr.Changes(st.sp.floor-1, func(store.Entry) (bool, error) { return true, nil }); err != errNeedLock {
				return fmt.Errorf("Changes below the floor answered %v, want errNeedLock", err)
			}
		}
		return nil
	})
}

// copyKey commits to key to the value of key from with "!" appended,
// through s, and returns that value.
func copyKey(s *Store, p store.Partition, from, to string) (string, error) {
	var val string
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		e, _, err := r.Get(from)
		if err != nil {
			return nil, err
		}
		val = string(e.Value) + "!"
		v := h.Version + 1
		return &store.Commit{Version: v, Time: time.Now(), Ops: []byte("ops"),
			Entries: []store.Entry{{Key: to, Value: []byte(val), Version: v, ScalarVersion: v}}}, nil
	})
	return val, err
}

// TestSparseStateMatchesStore commits puts, deletes and keys written again
// to a partition too big to hold whole, through one store: each commit
// after the second reads the keys it writes and its device's batch, and is
// written on the sparse state, which after each commit knows exactly what
// the store holds.
func TestSparseStateMatchesStore(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{})
	p := store.Partition{Name: "erin"}
	bigPartition(t, s, p)
	const commits = 60
	for i := 3; i < 3+commits; i++ {
		v := uint64(i)
		device := fmt.Sprint("dev", i%3)
		var keys []string
		for j := range i%3 + 1 {
			keys = append(keys, fmt.Sprintf("k%03d", (i*37+j*101)%(holdRows+80))) // some never written
		}
		err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
			h, err := r.Head()
			if err != nil || h.Version != v-1 {
				return nil, fmt.Errorf("head %+v, %v; want version %d", h, err, v-1)
			}
			if _, err := r.DeviceBatch(device); err != nil {
				return nil, err
			}
			c := &store.Commit{Version: v, Time: time.Now(), Ops: []byte("ops"), Device: device, Batch: v}
			for j, k := range keys {
				old, ok, err := r.Get(k)
				if err != nil {
					return nil, err
				}
				e := store.Entry{Key: k, Version: v, ScalarVersion: v, Value: fmt.Appendf(nil, "%d:%v:%s", i, ok, old.Value)}
				if (i+j)%4 == 0 {
					e.Value, e.Deleted = nil, true
				}
				c.Entries = append(c.Entries, e)
			}
			return c, nil
		})
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		st := s.held.states.get(partID(p))
		if st == nil || st.sp == nil {
			t.Fatalf("after commit %d the store holds %+v, want a sparse state", i, st)
		}
		if err := sparseMatches(s, p, st); err != nil {
			t.Fatalf("after commit %d: %v", i, err)
		}
	}
	if c, m := heldCounts(s); c != commits || m != 0 {
		t.Errorf("%d held commits and %d moved, want %d and 0", c, m, commits)
	}
	if n := s.held.readsDone.Load(); n == 0 || n > commits {
		t.Errorf("%d reads of what the sparse state lacked over %d commits, want 1 to %d", n, commits, commits)
	}
}

// TestSparseStateTwoStores commits to a partition too big to hold whole
// through two stores on one schema, as two nodes. A commit on a sparse
// state that another store has moved past is never written: one that fn
// decided on what the state knew finds the head moved and runs as a
// transaction, on the partition as it is; one whose read finds the head
// moved runs fn again on what it read, at that head. Either way fn's last
// run sees the other store's write.
func TestSparseStateTwoStores(t *testing.T) {
	t.Parallel()
	a, b := twoStores(t)
	p := store.Partition{Name: "frank"}
	bigPartition(t, a, p)
	// a knows k000 (it wrote it); b writes it.
	if _, _, err := commitAt(b, p, time.Now(), "", store.Entry{Key: "k000", Value: []byte("b3")}); err != nil {
		t.Fatal(err)
	}
	moved := a.held.moved.Load()
	if val, err := copyKey(a, p, "k000", "k001"); err != nil || val != "b3!" {
		t.Fatalf("a copied k000 as %q, %v; want \"b3!\"", val, err)
	}
	if a.held.moved.Load() != moved+1 {
		t.Errorf("a's commit on what its sparse state knew of k000 was not refused")
	}

	// A second partition: a does not know k005, which b writes, so a's
	// read finds the head moved, and a commits on what it read.
	q := store.Partition{Name: "grace"}
	bigPartition(t, a, q)
	if _, _, err := commitAt(b, q, time.Now(), "", store.Entry{Key: "k005", Value: []byte("b3")}); err != nil {
		t.Fatal(err)
	}
	moved, committed := a.held.moved.Load(), a.held.committed.Load()
	if val, err := copyKey(a, q, "k005", "k006"); err != nil || val != "b3!" {
		t.Fatalf("a copied k005 as %q, %v; want \"b3!\"", val, err)
	}
	if a.held.moved.Load() != moved || a.held.committed.Load() != committed+1 {
		t.Errorf("a's commit after a read at the moved head: %d moved and %d committed, want none and one",
			a.held.moved.Load()-moved, a.held.committed.Load()-committed)
	}
	for _, c := range []struct {
		p        store.Partition
		key, val string
		version  uint64
	}{{p, "k001", "b3!", 4}, {q, "k006", "b3!", 4}} {
		err := b.View(context.Background(), c.p, func(r store.Reader) error {
			e, ok, err := r.Get(c.key)
			if err != nil || !ok || string(e.Value) != c.val || e.Version != c.version {
				return fmt.Errorf("%s %s = %+v, %v, %v; want %q at version %d", c.p, c.key, e, ok, err, c.val, c.version)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
}

// TestSparseStateCoolDown holds sparse states of a partition found too big
// to hold whole, and none of one another process committed to.
func TestSparseStateCoolDown(t *testing.T) {
	c := newStateCache(10_000, time.Now)
	sparseState := &partState{sp: &sparse{}, size: 100}
	c.mark("u:big", false)
	if got := c.readAheadRows("u:big"); got != prefetchRows {
		t.Errorf("a partition found too big reads %d rows ahead, want %d", got, prefetchRows)
	}
	c.hold("u:big", &partState{pf: &prefetch{}, size: 100})
	if c.get("u:big") != nil {
		t.Errorf("a whole state was held of a partition found too big")
	}
	c.hold("u:big", sparseState)
	if c.get("u:big") == nil {
		t.Errorf("a sparse state was not held of a partition found too big")
	}
	if got := c.readAheadRows("u:big"); got != prefetchRows {
		t.Errorf("a partition with a sparse state reads %d rows ahead, want %d", got, prefetchRows)
	}
	c.coolDown("u:big")
	c.hold("u:big", sparseState)
	if c.get("u:big") != nil {
		t.Errorf("a sparse state was held of a partition another process committed to")
	}
}

// TestSparseReadsGrouped has five Updates, each on a sparse state of its
// own partition, read what their states lack in one statement, then commit
// on what they read.
func TestSparseReadsGrouped(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{})
	const n = 5
	parts := make([]store.Partition, n)
	for i := range parts {
		parts[i] = store.Partition{Name: fmt.Sprint("henry", i)}
		bigPartition(t, s, parts[i])
	}
	statements, reads := s.held.readStatements.Load(), s.held.readsDone.Load()
	errs := inOneBatch(t, &s.held.reads, n, func(i int) error {
		_, err := copyKey(s, parts[i], fmt.Sprintf("k%03d", 10+i), "copy")
		return err
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	if st, r := s.held.readStatements.Load()-statements, s.held.readsDone.Load()-reads; st != 1 || r != n {
		t.Errorf("%d reads in %d statements, want %d in 1", r, st, n)
	}
	for i, p := range parts {
		err := s.View(context.Background(), p, func(r store.Reader) error {
			e, ok, err := r.Get("copy")
			if want := "seed!"; err != nil || !ok || string(e.Value) != want || e.Version != 3 {
				return fmt.Errorf("copy = %+v, %v, %v; want %q at version 3", e, ok, err, want)
			}
			return nil
		})
		if err != nil {
			t.Errorf("partition %d: %v", i, err)
		}
	}
}

// TestSparseReadFails fails the read of what a sparse state lacks: one that
// PostgreSQL refused runs the Update as a transaction, which commits; one
// lost in flight fails the Update with its error, and commits nothing.
func TestSparseReadFails(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{})
	p := store.Partition{Name: "judy"}
	bigPartition(t, s, p)
	s.hooks.failRead = func() error { return &pgconn.PgError{Severity: "ERROR", Code: "57014", Message: "canceling statement"} }
	tx := s.transactions.Load()
	if val, err := copyKey(s, p, "k010", "refused"); err != nil || val != "seed!" {
		t.Fatalf("with its read refused, the Update copied %q, %v; want \"seed!\"", val, err)
	}
	if s.transactions.Load() != tx+1 {
		t.Errorf("with its read refused, the Update did not run as a transaction")
	}
	lost := fmt.Errorf("%w: connection lost", store.ErrUnavailable)
	s.hooks.failRead = func() error { return lost }
	if _, err := copyKey(s, p, "k011", "lost"); !errors.Is(err, lost) {
		t.Fatalf("with its read lost, the Update failed with %v; want %v", err, lost)
	}
	err := s.View(context.Background(), p, func(r store.Reader) error {
		h, err := r.Head()
		if err != nil || h.Version != 3 {
			return fmt.Errorf("head %+v, %v; want version 3, the refused read's commit and no other", h, err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
