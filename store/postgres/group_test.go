package postgres

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/store"
)

// grouped runs n commits on s as one group: it holds the group's statement
// back until all n have queued, then lets them go in one. It returns each
// commit's error.
func grouped(t *testing.T, s *Store, n int, commit func(i int) error) []error {
	t.Helper()
	return inOneBatch(t, &s.held.commits, n, commit)
}

// inOneBatch runs n calls of call that each add an item to g, as one batch:
// it holds g's batches back until all n items have queued, then lets them go
// in one. It returns each call's error.
func inOneBatch[T any](t *testing.T, g *batcher[T], n int, call func(i int) error) []error {
	t.Helper()
	g.mu.Lock()
	if g.running {
		g.mu.Unlock()
		t.Fatal("a batch is in flight already")
	}
	g.running = true // hold the next batch back
	g.mu.Unlock()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = call(i) })
	}
	queued := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.queue)
	}
	for deadline := time.Now().Add(10 * time.Second); queued() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d items queued", queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
	g.mu.Lock()
	batch := g.takeLocked()
	g.mu.Unlock()
	g.loop(batch)
	wg.Wait()
	return errs
}

// heldStatements returns how many statements s has written held commits in.
func heldStatements(s *Store) int64 { return s.held.statements.Load() }

// entriesOf returns p's entries as KEY=VALUE@VERSION, read through s.
func entriesOf(t *testing.T, s *Store, p store.Partition) []string {
	t.Helper()
	var got []string
	err := s.View(context.Background(), p, func(r store.Reader) error {
		return r.Changes(0, func(e store.Entry) (bool, error) {
			got = append(got, fmt.Sprintf("%s=%s@%d", e.Key, e.Value, e.Version))
			return true, nil
		})
	})
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return got
}

// TestGroupCommit commits to six partitions a store holds in one statement,
// one of them moved on by another store: the other five are written by the
// statement, the moved one as a transaction on the partition as it is, and
// every commit lands once, in the entries and, in version order, the feed.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	a, b := twoStores(t)
	now := time.Now()
	put := func(k string) store.Entry { return store.Entry{Key: k, Value: []byte(k)} }
	parts := make([]store.Partition, 6)
	for i := range parts {
		parts[i] = store.Partition{Name: fmt.Sprint("g", i)}
		if _, _, err := commitAt(a, parts[i], now, "", put("first")); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := commitAt(b, parts[2], now, "", put("other")); err != nil {
		t.Fatal(err)
	}
	statements, held := heldStatements(a), a.held.committed.Load()
	errs := grouped(t, a, len(parts), func(i int) error {
		_, found, err := commitAt(a, parts[i], now, "other", put("second"))
		if err == nil && found != (i == 2) {
			return fmt.Errorf("%s: saw the other store's commit: %v", parts[i], found)
		}
		return err
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("commit to %s: %v", parts[i], err)
		}
	}
	if n := heldStatements(a) - statements; n != 1 {
		t.Errorf("%d statements wrote the group, want 1", n)
	}
	if c, m := heldCounts(a); c-held != 5 || m != 1 {
		t.Errorf("%d held commits and %d moved, want 5 and 1", c-held, m)
	}
	for i, p := range parts {
		want := []string{"first=first@1", "second=second@2"}
		if i == 2 {
			want = []string{"first=first@1", "other=other@2", "second=second@3"}
		}
		if got := entriesOf(t, b, p); !slices.Equal(got, want) {
			t.Errorf("%s: entries %v, want %v", p, got, want)
		}
	}
	waitFeed(t, b, 2*len(parts)+1, feedInOrder)
}

// TestGroupCommitLocked commits, in one statement, to a partition whose
// head another transaction holds locked and to one it does not: the
// statement does not wait for the lock. The free partition's commit is done
// while the lock is held; the locked one's runs as a transaction, after it.
func TestGroupCommitLocked(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	s := openSchema(t, schema, Options{})
	ctx := context.Background()
	now := time.Now()
	free, locked := store.Partition{Name: "free"}, store.Partition{Name: "locked"}
	for _, p := range []store.Partition{free, locked} {
		if _, _, err := commitAt(s, p, now, "", store.Entry{Key: "k", Value: []byte("1")}); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1 FROM dalv_heads WHERE part = $1 FOR UPDATE", partID(locked)); err != nil {
		t.Fatal(err)
	}
	lockedDone := make(chan error, 1)
	errs := grouped(t, s, 2, func(i int) error {
		if i == 0 {
			_, _, err := commitAt(s, free, now, "", store.Entry{Key: "k", Value: []byte("2")})
			return err
		}
		go func() {
			_, _, err := commitAt(s, locked, now, "", store.Entry{Key: "k", Value: []byte("2")})
			lockedDone <- err
		}()
		return nil
	})
	if errs[0] != nil {
		t.Fatalf("commit to the free partition: %v", errs[0])
	}
	if got := entriesOf(t, s, free); !slices.Equal(got, []string{"k=2@2"}) {
		t.Errorf("free partition while the other is locked: %v, want k=2@2", got)
	}
	select {
	case err := <-lockedDone:
		t.Fatalf("commit to the locked partition returned while its head was locked: %v", err)
	default:
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-lockedDone:
		if err != nil {
			t.Fatalf("commit to the locked partition: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("commit to the locked partition still waits after the lock was released")
	}
	if got := entriesOf(t, s, locked); !slices.Equal(got, []string{"k=2@2"}) {
		t.Errorf("locked partition after its lock: %v, want k=2@2", got)
	}
	if c, m := heldCounts(s); c != 1 || m != 1 {
		t.Errorf("%d held commits and %d moved, want 1 and 1", c, m)
	}
}

// TestGroupCommitFails commits, in one statement, a commit PostgreSQL
// refuses (a key too long for its index) among others: the statement writes
// nothing, each commit runs as a transaction of its own, and only the
// refused one fails, leaving its partition as it was.
func TestGroupCommitFails(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	s := openSchema(t, schema, Options{})
	now := time.Now()
	parts := make([]store.Partition, 4)
	for i := range parts {
		parts[i] = store.Partition{Name: fmt.Sprint("f", i)}
		if _, _, err := commitAt(s, parts[i], now, "", store.Entry{Key: "k", Value: []byte("1")}); err != nil {
			t.Fatal(err)
		}
	}
	long := rand.Text() // random, so PostgreSQL cannot compress it below the index's limit
	for len(long) < 10000 {
		long += rand.Text()
	}
	statements := heldStatements(s)
	errs := grouped(t, s, len(parts), func(i int) error {
		key := "k"
		if i == 1 {
			key = long
		}
		_, _, err := commitAt(s, parts[i], now, "", store.Entry{Key: key, Value: []byte("2")})
		return err
	})
	for i, err := range errs {
		switch {
		case i == 1 && err == nil:
			t.Errorf("commit of a %d-byte key: no error", len(long))
		case i == 1 && !strings.Contains(err.Error(), "index row"):
			t.Errorf("commit of a %d-byte key: %v, want PostgreSQL's index row error", len(long), err)
		case i != 1 && err != nil:
			t.Errorf("commit to %s beside the refused one: %v", parts[i], err)
		}
	}
	if n := heldStatements(s) - statements; n != 0 {
		t.Errorf("%d statements wrote held commits, want 0: the group's failed", n)
	}
	for i, p := range parts {
		want := []string{"k=2@2"}
		if i == 1 {
			want = []string{"k=1@1"}
		}
		if got := entriesOf(t, s, p); !slices.Equal(got, want) {
			t.Errorf("%s: entries %v, want %v", p, got, want)
		}
	}
}

// TestGroupCommitConcurrent has sixteen goroutines commit to partitions of
// their own through one store, as devices on one node do: commits that
// arrive while a statement is in flight go together in the next, and every
// commit lands once, at its own version, in the entries and the feed.
func TestGroupCommitConcurrent(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	s := openSchema(t, schema, Options{})
	const writers, each = 16, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			p := store.Partition{Name: fmt.Sprint("c", w)}
			for i := range each {
				v, _, err := commitAt(s, p, time.Now(), "", store.Entry{Key: fmt.Sprint("k", i%3), Value: fmt.Append(nil, i)})
				if err != nil || v != uint64(i+1) {
					t.Errorf("%s, commit %d: version %d, %v", p, i+1, v, err)
					return
				}
			}
		})
	}
	wg.Wait()
	committed, _ := heldCounts(s)
	statements := heldStatements(s)
	t.Logf("%d held commits in %d statements", committed, statements)
	if committed < writers*(each-1)/2 || statements >= committed {
		t.Errorf("%d held commits in %d statements: want most commits held, in fewer statements", committed, statements)
	}
	for w := range writers {
		p := store.Partition{Name: fmt.Sprint("c", w)}
		want := []string{"k2=17@18", "k0=18@19", "k1=19@20"} // in version order
		if got := entriesOf(t, s, p); !slices.Equal(got, want) {
			t.Errorf("%s: entries %v, want %v", p, got, want)
		}
	}
	waitFeed(t, s, writers*each, feedInOrder)
}

// TestGroupCommitConnectionLost kills the backend of a group's statement
// while it waits for a lock: no commit in it can know whether it was
// written, so each fails as unavailable with an unknown outcome, none is
// retried behind the caller's back, and the store commits on afterwards.
func TestGroupCommitConnectionLost(t *testing.T) {
	t.Parallel()
	schema, u := pgtest.Schema(t)
	app := "dalv-test-" + schema
	ctx := context.Background()
	// A timeout well past the test's: the statement ends by the kill.
	s, err := Open(ctx, pgtest.WithParam(u, "application_name", app), Options{Schema: schema, MaxConns: 4, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	now := time.Now()
	parts := []store.Partition{{Name: "l0"}, {Name: "l1"}, {Name: "l2"}}
	for _, p := range parts {
		if _, _, err := commitAt(s, p, now, "", store.Entry{Key: "k", Value: []byte("1")}); err != nil {
			t.Fatal(err)
		}
	}
	// Another transaction keeps the feed from taking rows, so the group's
	// statement waits, its heads locked, until its backend is killed.
	release := holdTx(t, u, "LOCK TABLE "+pgx.Identifier{schema, "dalv_feed"}.Sanitize()+" IN EXCLUSIVE MODE")
	// The killer looks from a connection of its own: a transaction sees
	// pg_stat_activity as it was at its first look.
	killer, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer killer.Close(ctx)
	killed := make(chan struct{})
	var terminated atomic.Bool
	go func() {
		defer close(killed)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			var n int
			err := killer.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE 'WITH c AS%'`, app).Scan(&n)
			if err != nil || n > 0 {
				terminated.Store(n > 0)
				return
			}
		}
	}()
	errs := grouped(t, s, len(parts), func(i int) error {
		_, _, err := commitAt(s, parts[i], now, "", store.Entry{Key: "k", Value: []byte("2")})
		return err
	})
	<-killed
	if !terminated.Load() {
		t.Fatal("the group's statement was never seen waiting for the feed's lock")
	}
	for i, err := range errs {
		if !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, errUnknownOutcome) {
			t.Errorf("commit to %s in the killed statement: %v, want unavailable with an unknown outcome", parts[i], err)
		}
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if got := entriesOf(t, s, p); !slices.Equal(got, []string{"k=1@1"}) {
			t.Errorf("%s after the killed statement: %v, want k=1@1", p, got)
		}
		if v, _, err := commitAt(s, p, now, "", store.Entry{Key: "k", Value: []byte("3")}); err != nil || v != 2 {
			t.Errorf("commit to %s afterwards: version %d, %v; want 2", p, v, err)
		}
	}
}

// TestHeldCommitAfterOwnTransaction has a store's held commit find the head
// moved by a transaction of the same store (a commit under an idempotency
// key) while it waited for its statement: it goes on from the state the
// transaction left, in the next statement, and the partition does not cool
// down.
func TestHeldCommitAfterOwnTransaction(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{})
	p := store.Partition{Name: "ivan"}
	for i := 1; i <= 2; i++ { // a transaction, then a held commit
		if v, _, err := commitAt(s, p, time.Now(), "", store.Entry{Key: "k", Value: []byte{byte(i)}}); err != nil || v != uint64(i) {
			t.Fatalf("commit %d: version %d, %v", i, v, err)
		}
	}
	g := &s.held.commits
	g.mu.Lock()
	g.running = true // hold the next statement back
	g.mu.Unlock()
	held := make(chan error, 1)
	var version uint64
	go func() {
		var err error
		version, _, err = commitAt(s, p, time.Now(), "", store.Entry{Key: "held", Value: []byte("x")})
		held <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		g.mu.Lock()
		n := len(g.queue)
		g.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the held commit did not queue")
		}
	}
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		return &store.Commit{Version: 3, Time: time.Now(), Ops: []byte("ops"), IdempotencyKey: "key-1",
			Entries: []store.Entry{{Key: "tx", Value: []byte("y"), Version: 3, ScalarVersion: 3}}}, nil
	})
	if err != nil {
		t.Fatalf("the transaction: %v", err)
	}
	moved, committed := s.held.moved.Load(), s.held.committed.Load()
	g.mu.Lock()
	batch := g.takeLocked()
	g.mu.Unlock()
	g.loop(batch)
	if err := <-held; err != nil || version != 4 {
		t.Fatalf("the held commit: version %d, %v; want 4", version, err)
	}
	if m, c := s.held.moved.Load()-moved, s.held.committed.Load()-committed; m != 1 || c != 1 {
		t.Errorf("%d held commits found the head moved and %d committed, want 1 and 1", m, c)
	}
	if st := s.held.states.get(partID(p)); st == nil || st.head.Version != 4 {
		t.Errorf("after the commits the store holds %+v, want the state at version 4", st)
	}
}
