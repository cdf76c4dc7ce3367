package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openSchema opens a store on schema, closed when the test ends.
func openSchema(t *testing.T, schema string, opts Options) *Store {
	t.Helper()
	opts.Schema = schema
	return openURL(t, pgtest.URL(t), opts)
}

// openURL opens a store on the database at u, closed when the test ends.
func openURL(t *testing.T, u string, opts Options) *Store {
	t.Helper()
	if opts.MaxConns == 0 {
		opts.MaxConns = 4
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, u, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// openFresh opens a store on a fresh schema, dropped when the test ends.
func openFresh(t *testing.T, opts Options) *Store {
	t.Helper()
	schema, _ := pgtest.Schema(t)
	return openSchema(t, schema, opts)
}

func TestConformance(t *testing.T) {
	storetest.RunOptions(t, func(t *testing.T) store.Store { return openFresh(t, Options{}) },
		storetest.Options{Dump: dump})
}

// TestConformanceNoReadAhead runs the suite with every read a query, as
// for partitions too large to read ahead.
func TestConformanceNoReadAhead(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := openFresh(t, Options{})
		s.hooks.noReadAhead = true
		return s
	})
}

// dump returns every row of every table of the store's schema, each
// column's raw bytes (bytea as stored, not hex) joined by '|'.
func dump(st store.Store) ([][]byte, error) {
	s := st.(*Store)
	ctx := context.Background()
	var tables []string
	rows, err := s.pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = current_schema()`)
	if err != nil {
		return nil, err
	}
	tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, table := range tables {
		rows, err := s.pool.Query(ctx, "SELECT * FROM "+pgx.Identifier{table}.Sanitize(), pgx.QueryResultFormats{pgx.BinaryFormatCode})
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			out = append(out, append([]byte(table+":"), bytes.Join(rows.RawValues(), []byte("|"))...))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func TestPartID(t *testing.T) {
	for _, tc := range []struct {
		p    store.Partition
		want string
	}{
		{store.Partition{Name: "alice"}, "u:alice"},
		{store.Partition{Shared: true, Name: "catalog"}, "s:catalog"},
		{store.Partition{Name: "a b/ü"}, "u:a b/ü"},
		{store.Partition{Name: "a\x00b"}, "u:a%00b"},
		{store.Partition{Name: "100%"}, "u:100%25"},
		{store.Partition{Name: "x\ny"}, "u:x%0Ay"},
		{store.Partition{Name: "bad\xffutf8"}, "u:bad%FFutf8"},
		{store.Partition{Name: "\xed\xa0\x80"}, "u:%ED%A0%80"},
	} {
		got := partID(tc.p)
		if got != tc.want {
			t.Errorf("partID(%+v) = %q, want %q", tc.p, got, tc.want)
		}
		back, err := parsePartID(got)
		if err != nil || back != tc.p {
			t.Errorf("parsePartID(%q) = %+v, %v, want %+v", got, back, err, tc.p)
		}
	}
	for _, bad := range []string{"", "x:a", "u:", "u:%", "u:%4", "u:%zz"} {
		if p, err := parsePartID(bad); !errors.Is(err, store.ErrCorruption) {
			t.Errorf("parsePartID(%q) = %+v, %v, want corruption", bad, p, err)
		}
	}
}

func FuzzPartID(f *testing.F) {
	f.Add(false, "alice")
	f.Add(true, "a\x00%\n\xff")
	f.Fuzz(func(t *testing.T, shared bool, name string) {
		if name == "" {
			return
		}
		p := store.Partition{Shared: shared, Name: name}
		id := partID(p)
		if strings.ContainsAny(id, "\x00\n") {
			t.Fatalf("partID(%q) = %q holds NUL or newline", name, id)
		}
		if back, err := parsePartID(id); err != nil || back != p {
			t.Fatalf("parsePartID(partID(%+v)) = %+v, %v", p, back, err)
		}
	})
}

// FuzzDecodePos feeds arbitrary bytes to the feed position decoder (a feed
// cursor carries a position from outside): it never panics, refuses with
// store.ErrInvalidPos only, and what it accepts encodes to a position that
// decodes the same. The seeds in testdata/fuzz/FuzzDecodePos are positions
// encodePos made and near misses.
func FuzzDecodePos(f *testing.F) {
	f.Add([]byte(encodePos(5, "u:alice")))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		key, part, err := decodePos(store.FeedPos(b))
		if err != nil {
			if !errors.Is(err, store.ErrInvalidPos) {
				t.Fatalf("decodePos(%x) error %v does not wrap store.ErrInvalidPos", b, err)
			}
			return
		}
		if key < 0 {
			t.Fatalf("decodePos(%x) = negative key %d", b, key)
		}
		if k, p, err := decodePos(encodePos(key, part)); err != nil || k != key || p != part {
			t.Fatalf("decodePos(%x) = %d, %q, which does not survive a round trip: %d, %q, %v", b, key, part, k, p, err)
		}
	})
}

func TestPos(t *testing.T) {
	a := encodePos(5, "u:b")
	for _, tc := range []struct {
		lo, hi store.FeedPos
	}{
		{"", encodePos(1, "")},
		{encodePos(5, "u:a"), a},
		{a, encodePos(5, "u:b\x00")},
		{a, encodePos(5, "u:ba")},
		{a, encodePos(6, "u:a")},
		{encodePos(255, "u:z"), encodePos(256, "u:a")},
	} {
		if !(tc.lo < tc.hi) {
			t.Errorf("%x is not below %x", tc.lo, tc.hi)
		}
	}
	if k, p, err := decodePos(a); err != nil || k != 5 || p != "u:b" {
		t.Errorf("decodePos(%x) = %d, %q, %v", a, k, p, err)
	}
	for _, bad := range []store.FeedPos{"x", "1234567", "\xff\x00\x00\x00\x00\x00\x00\x00"} {
		if _, _, err := decodePos(bad); !errors.Is(err, store.ErrInvalidPos) {
			t.Errorf("decodePos(%x) = %v, want %v", bad, err, store.ErrInvalidPos)
		}
	}
}

// commitOne commits one key to p at its next version.
func commitOne(ctx context.Context, s *Store, p store.Partition, key string) (uint64, error) {
	var v uint64
	err := s.Update(ctx, p, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		v = h.Version + 1
		return &store.Commit{Version: v, Time: time.Now(), Entries: []store.Entry{
			{Key: key, Value: []byte("x"), Version: v, ScalarVersion: v},
		}, Ops: fmt.Appendf(nil, "%s@%d", p, v)}, nil
	})
	return v, err
}

// readFeed returns what one Feed call from after delivers, as
// "partition@version" strings.
func readFeed(t *testing.T, s *Store, after store.FeedPos) []string {
	t.Helper()
	var got []string
	err := s.Feed(context.Background(), after, func(r store.FeedRecord) (bool, error) {
		got = append(got, fmt.Sprintf("%s@%d", r.Partition, r.Version))
		return true, nil
	})
	if err != nil {
		t.Fatalf("Feed: %v", err)
	}
	return got
}

// waitFeed waits until s's feed holds n records, fails if it holds more,
// and checks them with check: transactions of other tests on the same
// server may hold the feed up for a moment.
func waitFeed(t *testing.T, s *Store, n int, check func(feed []string) error) {
	t.Helper()
	var feed []string
	wait.For(t, 20*time.Second, func() error {
		if feed = readFeed(t, s, ""); len(feed) < n {
			return fmt.Errorf("feed holds %d records %q, want %d", len(feed), feed, n)
		}
		return nil
	})
	if len(feed) != n {
		t.Fatalf("feed holds %d records %q, want %d", len(feed), feed, n)
	}
	if err := check(feed); err != nil {
		t.Fatal(err)
	}
}

// feedIs checks that a feed is want, its records separated by spaces.
func feedIs(want string) func(feed []string) error {
	return func(feed []string) error {
		if got := strings.Join(feed, " "); got != want {
			return fmt.Errorf("Feed = %q, want %q", got, want)
		}
		return nil
	}
}

// feedInOrder checks that each partition's versions come once, in order,
// from 1.
func feedInOrder(feed []string) error {
	last := make(map[string]int)
	for _, r := range feed {
		part, v, _ := strings.Cut(r, "@")
		var version int
		fmt.Sscan(v, &version)
		if version != last[part]+1 {
			return fmt.Errorf("feed: %s after version %d", r, last[part])
		}
		last[part] = version
	}
	return nil
}

// feedOf checks that a feed is user's versions from 1, in order.
func feedOf(user string) func(feed []string) error {
	return func(feed []string) error {
		for i, r := range feed {
			if want := fmt.Sprintf("user:%s@%d", user, i+1); r != want {
				return fmt.Errorf("feed record %d = %s, want %s", i, r, want)
			}
		}
		return nil
	}
}

// TestFeedWaitsForEarlierTransaction holds a commit to one partition open
// at a barrier after it took its feed key, and commits to another partition
// meanwhile: the later commit has the higher key but commits first. The
// feed must not deliver it while the earlier may still commit (a reader
// would then resume past the earlier and skip it), and delivers both, in
// key order, once the earlier commits.
func TestFeedWaitsForEarlierTransaction(t *testing.T) {
	t.Parallel()
	feedWaitsForEarlier(t, false)
}

// TestFeedWaitsForEarlierGroup is TestFeedWaitsForEarlierTransaction with
// the earlier commit on a held state, so a group's statement writes it (its
// hook holds the statement's transaction open before COMMIT), as
// dalv_postgres_held_statements_total shows.
func TestFeedWaitsForEarlierGroup(t *testing.T) {
	t.Parallel()
	feedWaitsForEarlier(t, true)
}

// feedWaitsForEarlier runs the two tests above: with grouped, the store
// first commits to the partition once, so that it holds its state.
func feedWaitsForEarlier(t *testing.T, grouped bool) {
	schema, _ := pgtest.Schema(t)
	held := openSchema(t, schema, Options{})
	other := openSchema(t, schema, Options{FeedWait: 100 * time.Millisecond})
	p, q := store.Partition{Name: "p"}, store.Partition{Name: "q"}
	ctx := context.Background()
	var before []string // the feed before the held commit
	var lastBefore store.FeedPos
	if grouped {
		if _, err := commitOne(ctx, held, q, "k"); err != nil {
			t.Fatal(err)
		}
		waitFeed(t, other, 1, feedIs("user:q@1"))
		before, lastBefore = []string{"user:q@1"}, readPos(t, other)["user:q@1"]
	}
	statements := heldStatementsTotal(t, held)
	atBarrier, release := make(chan int64), make(chan struct{})
	held.hooks.beforeCommit = func(_ store.Partition, feedKey int64) {
		atBarrier <- feedKey
		<-release
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if v, err := commitOne(ctx, held, q, "k"); err != nil || v != uint64(len(before)+1) {
			t.Errorf("held commit: version %d, %v; want version %d", v, err, len(before)+1)
		}
	})
	qKey := <-atBarrier
	if _, err := commitOne(ctx, other, p, "k"); err != nil {
		t.Fatal(err)
	}
	pos := readPos(t, other)
	if pk, _, _ := decodePos(pos["user:p@1"]); pos["user:p@1"] != "" && pk <= qKey {
		t.Fatalf("the later commit's key %d is not above the held one's %d", pk, qKey)
	}
	if got := readFeed(t, other, ""); !slices.Equal(got, before) {
		t.Fatalf("Feed while an earlier commit is in flight = %v, want %v", got, before)
	}
	if _, last, err := other.FeedBounds(ctx); err != nil || last != lastBefore {
		t.Fatalf("FeedBounds last while an earlier commit is in flight = %x, %v, want %x", last, err, lastBefore)
	}
	close(release)
	wg.Wait()
	want := "user:q@1 user:p@1"
	if grouped {
		want = "user:q@1 user:q@2 user:p@1"
	}
	waitFeed(t, other, len(before)+2, feedIs(want))
	wantStatements := 0.0
	if grouped {
		wantStatements = 1
	}
	if n := heldStatementsTotal(t, held) - statements; n != wantStatements {
		t.Errorf("dalv_postgres_held_statements_total rose by %v, want %v: the hooked commit did not go the way it should", n, wantStatements)
	}
}

// heldStatementsTotal reads dalv_postgres_held_statements_total off s's
// metrics.
func heldStatementsTotal(t *testing.T, s *Store) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "dalv_postgres_held_statements_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no dalv_postgres_held_statements_total among the store's metrics")
	return 0
}

// holdTx runs sql in a transaction on a connection of its own to the
// database at url, and keeps the transaction open until release rolls it
// back, or the test ends.
func holdTx(t *testing.T, url, sql string) (release func() error) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
	return func() error { return tx.Rollback(ctx) }
}

// readPos returns the positions of the records the feed delivers now.
func readPos(t *testing.T, s *Store) map[string]store.FeedPos {
	t.Helper()
	m := make(map[string]store.FeedPos)
	err := s.Feed(context.Background(), "", func(r store.FeedRecord) (bool, error) {
		m[fmt.Sprintf("%s@%d", r.Partition, r.Version)] = r.Pos
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestFeedPartitionOrder is the variant in one partition: a transaction
// takes its id, then waits while a later transaction commits version 1 of
// the partition, then commits version 2. By transaction ids alone, version
// 2 would come first in the feed; the partition's last key keeps it after.
func TestFeedPartitionOrder(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	held := openSchema(t, schema, Options{})
	other := openSchema(t, schema, Options{FeedWait: 100 * time.Millisecond})
	p := store.Partition{Name: "p"}
	var xid int64
	atBarrier, release := make(chan struct{}), make(chan struct{})
	held.hooks.beforeLock = func(ctx context.Context, conn *pgx.Conn) error {
		if err := conn.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
			return err
		}
		close(atBarrier)
		<-release
		return nil
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	var heldVersion uint64
	wg.Go(func() {
		var err error
		if heldVersion, err = commitOne(ctx, held, p, "b"); err != nil {
			t.Errorf("held commit: %v", err)
		}
	})
	<-atBarrier
	if v, err := commitOne(ctx, other, p, "a"); err != nil || v != 1 {
		t.Fatalf("commit = version %d, %v; want version 1", v, err)
	}
	if got := readFeed(t, other, ""); len(got) != 0 {
		t.Fatalf("Feed while an older transaction is open = %v, want nothing", got)
	}
	close(release)
	wg.Wait()
	if heldVersion != 2 {
		t.Fatalf("held commit got version %d, want 2", heldVersion)
	}
	waitFeed(t, other, 2, feedIs("user:p@1 user:p@2"))
	pos := readPos(t, other)
	k2, _, _ := decodePos(pos["user:p@2"])
	if k2 <= xid {
		t.Logf("version 2's key %d, its transaction's id %d", k2, xid)
	} else {
		t.Logf("version 2's key %d is above its transaction's id %d: the partition's order kept it after version 1", k2, xid)
	}
}

// TestManyNodesSerialised has two stores (as two nodes) increment one
// counter at once: no update is lost.
func TestManyNodesSerialised(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	nodes := []*Store{openSchema(t, schema, Options{}), openSchema(t, schema, Options{})}
	p := store.Partition{Name: "alice"}
	const each = 30
	var wg sync.WaitGroup
	for i, s := range nodes {
		for g := range 3 {
			wg.Go(func() {
				for j := range each {
					if _, err := commitOne(context.Background(), s, p, fmt.Sprintf("n%d/g%d/%d", i, g, j)); err != nil {
						t.Errorf("node %d: %v", i, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	var h store.Head
	err := nodes[1].View(context.Background(), p, func(r store.Reader) (err error) {
		h, err = r.Head()
		return err
	})
	if err != nil || h.Version != 2*3*each {
		t.Errorf("Head() = %+v, %v; want version %d", h, err, 2*3*each)
	}
	waitFeed(t, nodes[0], 2*3*each, feedOf("alice"))
}

// TestConcurrentOpen opens several stores on one new schema at once: one
// migrates, the others wait for it.
func TestConcurrentOpen(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	pgtest.Exec(t, "DROP SCHEMA "+schema) // Open creates it
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { openSchema(t, schema, Options{MaxConns: 2}) })
	}
	wg.Wait()
	s := openSchema(t, schema, Options{})
	var v int
	if err := s.pool.QueryRow(context.Background(), "SELECT version FROM dalv_schema").Scan(&v); err != nil || v != SchemaVersion() {
		t.Errorf("schema version = %d, %v; want %d", v, err, SchemaVersion())
	}
}

func TestOpenNewerSchema(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	s := openSchema(t, schema, Options{})
	if _, err := s.pool.Exec(context.Background(), "UPDATE dalv_schema SET version = version + 1"); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), pgtest.URL(t), Options{Schema: schema})
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open on a newer schema = %v, want an error saying so", err)
	}
}

func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Open(ctx, "postgres://postgres:secret-pw@127.0.0.1:1/test?sslmode=disable&connect_timeout=2", Options{})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open on a closed port = %v, want %v", err, store.ErrUnavailable)
	}
	if strings.Contains(err.Error(), "secret-pw") {
		t.Errorf("Open's error shows the password: %v", err)
	}
	if _, err := Open(ctx, "postgres://x:secret-pw@[bad", Options{}); err == nil || strings.Contains(err.Error(), "secret-pw") {
		t.Errorf("Open on a bad URL = %v, want an error without the password", err)
	}
}

// TestConnectionsKilled terminates the store's connections: operations
// fail with ErrUnavailable or succeed, and the store recovers by itself.
func TestConnectionsKilled(t *testing.T) {
	t.Parallel()
	schema, u := pgtest.Schema(t)
	app := "dalv-test-" + schema
	ctx := context.Background()
	s, err := Open(ctx, pgtest.WithParam(u, "application_name", app), Options{Schema: schema, MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	p := store.Partition{Name: "alice"}
	for i := range 3 {
		if _, err := commitOne(ctx, s, p, fmt.Sprint("before", i)); err != nil {
			t.Fatal(err)
		}
	}
	pgtest.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
	ok := 0
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ok < 5; i++ {
		_, err := commitOne(ctx, s, p, fmt.Sprint("after", i))
		switch {
		case err == nil:
			ok++
		case errors.Is(err, store.ErrUnavailable):
		default:
			t.Fatalf("commit after the kill: %v, want success or %v", err, store.ErrUnavailable)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
	}
	err = s.View(ctx, p, func(r store.Reader) error {
		_, err := r.Head()
		return err
	})
	if err != nil {
		t.Errorf("View after recovery: %v", err)
	}
}

// twoStores opens two stores on one fresh schema, as two processes would.
func twoStores(t *testing.T) (a, b *Store) {
	t.Helper()
	schema, _ := pgtest.Schema(t)
	return openSchema(t, schema, Options{}), openSchema(t, schema, Options{})
}

func TestNotifications(t *testing.T) {
	t.Parallel()
	a, b := twoStores(t)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan note, 100)
	listening := make(chan error, 1)
	go func() {
		listening <- b.Notifications(ctx, func(a store.Announcement) { got <- note{a.Partition, a.Version} }, nil)
	}()
	own := make(chan note, 100)
	go func() {
		_ = a.Notifications(ctx, func(a store.Announcement) { own <- note{a.Partition, a.Version} }, nil)
	}()
	p := store.Partition{Name: "a\nb %"}
	commitUntilNotified(t, a, p, got, 1)
	select {
	case n := <-own:
		t.Errorf("a store was notified of its own commit %+v", n)
	default:
	}
	cancel()
	if err := <-listening; err != nil {
		t.Errorf("Notifications after cancel = %v, want nil", err)
	}
}

// TestNotificationsListening checks Notifications' promise to whoever
// waits for its listening call: a commit made after it is announced, with
// no retry to cover a listener that did not listen yet.
func TestNotificationsListening(t *testing.T) {
	t.Parallel()
	a, b := twoStores(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan note, 100)
	listening := make(chan struct{}, 1)
	go func() {
		_ = b.Notifications(ctx, func(a store.Announcement) { got <- note{a.Partition, a.Version} }, func() { listening <- struct{}{} })
	}()
	select {
	case <-listening:
	case <-time.After(20 * time.Second):
		t.Fatal("Notifications did not call listening")
	}
	p := store.Partition{Name: "alice"}
	v, err := commitOne(context.Background(), a, p, "k")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-got:
		if n.p != p || n.v != v {
			t.Errorf("notification %+v, want %s at version %d", n, p, v)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no notification of the commit made after listening")
	}
}

// TestNotificationsAfterKill kills a store's connections, the one it
// announces its commits on included: its later commits are announced again.
func TestNotificationsAfterKill(t *testing.T) {
	t.Parallel()
	schema, u := pgtest.Schema(t)
	app := "dalv-test-notify-" + schema
	a, err := Open(context.Background(), pgtest.WithParam(u, "application_name", app), Options{Schema: schema, MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b := openSchema(t, schema, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan note, 100)
	go func() {
		_ = b.Notifications(ctx, func(a store.Announcement) { got <- note{a.Partition, a.Version} }, nil)
	}()
	p := store.Partition{Name: "alice"}
	last := commitUntilNotified(t, a, p, got, 1)
	pgtest.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
	commitUntilNotified(t, a, p, got, last+1)
}

// note is a notification of a commit.
type note struct {
	p store.Partition
	v uint64
}

// commitUntilNotified commits to p through s until got brings a
// notification of p at version least or later (a listener may not listen
// yet, a lost connection loses a notification), and returns the last
// version known committed; least-1 is the last one known before. Commits
// that fail with store.ErrUnavailable are tried again; such a commit may
// have applied (its connection died after the COMMIT went out), so each
// one since the last success may account for one version more in a
// notification. A notification of an earlier call's commit may come late.
func commitUntilNotified(t *testing.T, s *Store, p store.Partition, got <-chan note, least uint64) uint64 {
	t.Helper()
	deadline := time.After(20 * time.Second)
	last, unknown := least-1, uint64(0)
	for {
		v, err := commitOne(context.Background(), s, p, "k")
		switch {
		case err == nil:
			last, unknown = v, 0
		case errors.Is(err, store.ErrUnavailable):
			unknown++
		default:
			t.Fatal(err)
		}
		wait := time.After(100 * time.Millisecond)
	drain:
		for {
			select {
			case n := <-got:
				if n.p != p || n.v < 1 || n.v > last+unknown {
					t.Fatalf("notification %+v, want %s at 1..%d", n, p, last+unknown)
				}
				if n.v >= least {
					return max(last, n.v)
				}
			case <-wait:
				break drain
			case <-deadline:
				t.Fatalf("no notification of %s at version %d or later", p, least)
			}
		}
	}
}

func TestPayloadsSplit(t *testing.T) {
	s := &Store{node: "n1"}
	a := &announcer{s: s}
	pending := make(map[string]*pendingPart)
	for i := range 1000 {
		pending[fmt.Sprintf("u:user%04d", i)] = &pendingPart{version: uint64(i + 1)}
	}
	pending["u:"+strings.Repeat("x", maxPayload)] = &pendingPart{version: 1} // too long: left to polls
	payloads := a.payloads(pending)
	seen := 0
	other := &Store{node: "n2"}
	for _, pl := range payloads {
		if len(pl) > maxPayload {
			t.Errorf("payload of %d bytes", len(pl))
		}
		other.parsePayload(pl, func(a store.Announcement) {
			if want := pending[partID(a.Partition)].version; a.Version != want || a.Carried {
				t.Errorf("%s at %d (carried %v), want %d by version", a.Partition, a.Version, a.Carried, want)
			}
			seen++
		})
		s.parsePayload(pl, func(store.Announcement) { t.Error("own payload parsed") })
	}
	if seen != 1000 || len(payloads) < 2 {
		t.Errorf("%d partitions in %d payloads, want 1000 in several", seen, len(payloads))
	}
}

// TestSearchPathSchema opens a store with the schema named only by the
// URL's search_path, before it exists: Open creates it.
func TestSearchPathSchema(t *testing.T) {
	t.Parallel()
	schema, u := pgtest.Schema(t)
	pgtest.Exec(t, "DROP SCHEMA "+schema)
	s, err := Open(context.Background(), u, Options{})
	if err != nil {
		t.Fatalf("Open with search_path=%s: %v", schema, err)
	}
	defer s.Close()
	if _, err := commitOne(context.Background(), s, store.Partition{Name: "alice"}, "k"); err != nil {
		t.Fatal(err)
	}
	var n int
	err = s.pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'dalv_heads'", schema).Scan(&n)
	if err != nil || n != 1 {
		t.Errorf("dalv_heads in %s: %d, %v", schema, n, err)
	}
	if got := singleSchema(`"My Schema"`); got != "My Schema" {
		t.Errorf(`singleSchema("My Schema") = %q`, got)
	}
	for _, path := range []string{"", "a, b", `"$user", public`} {
		if got := singleSchema(path); got != "" {
			t.Errorf("singleSchema(%q) = %q, want none", path, got)
		}
	}
}

// TestMetrics holds a transaction with an id open: the feed stall metric
// shows it, and a commit made meanwhile shows as feed lag.
func TestMetrics(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{FeedWait: -1})
	ctx := context.Background()
	holdTx(t, pgtest.URL(t), "SELECT pg_current_xact_id()")
	if _, err := commitOne(ctx, s, store.Partition{Name: "alice"}, "k"); err != nil {
		t.Fatal(err)
	}
	if got := readFeed(t, s, ""); len(got) != 0 {
		t.Errorf("Feed behind an open transaction = %v, want nothing", got)
	}
	got := make(map[string]float64)
	for name := range map[string]bool{"dalv_feed_stall_seconds": true, "dalv_feed_lag_seconds": true} {
		v, err := gatherOne(s, name)
		if err != nil {
			t.Fatal(err)
		}
		got[name] = v
	}
	if got["dalv_feed_stall_seconds"] <= 0 || got["dalv_feed_lag_seconds"] <= 0 {
		t.Errorf("metrics = %v, want a stall and a lag above 0", got)
	}
	// The lag reads the feed order index from the bound, whatever the
	// feed's size, and not the whole feed.
	_, err := s.pool.Exec(ctx, `INSERT INTO dalv_feed (part, feed_key, version, nanos, erase, ops)
		SELECT 'u:bulk', g, g, 0, false, '' FROM generate_series(1, 50000) g`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE dalv_feed"); err != nil {
		t.Fatal(err)
	}
	rows, err := s.pool.Query(ctx, "EXPLAIN "+feedLag)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "Limit") || !strings.Contains(plan, "Index Scan using dalv_feed_order") ||
		strings.Contains(plan, "Seq Scan") || strings.Contains(plan, "Bitmap") {
		t.Errorf("the feed lag's plan over 50,000 feed rows:\n%s\nwant a limited scan of the feed order index from the bound", plan)
	}
	ch := make(chan prometheus.Metric, 16)
	s.Collect(ch)
	close(ch)
	if n := len(ch); n != 13 {
		t.Errorf("%d series collected, want 13: stall, lag, two of the pool, six of held states, three of commits", n)
	}
}

// gatherOne returns the value of the gauge name that s collects.
func gatherOne(s *Store, name string) (float64, error) {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(s); err != nil {
		return 0, err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue(), nil
		}
	}
	return 0, fmt.Errorf("no %s collected", name)
}

// TestCallerGone cancels an Update's caller while its statement runs: the
// statement finishes, the Update rolls back and fails with the caller's
// error, and the connection is kept, not closed and replaced.
func TestCallerGone(t *testing.T) {
	t.Parallel()
	// No held states: a commit in a group's statement is no one caller's,
	// and goes on when its caller goes away.
	s := openFresh(t, Options{MaxConns: 1, CacheBytes: -1})
	p := store.Partition{Name: "alice"}
	if _, err := commitOne(context.Background(), s, p, "before"); err != nil {
		t.Fatal(err)
	}
	conns := s.pool.Stat().NewConnsCount()
	ctx, cancel := context.WithCancel(context.Background())
	s.hooks.beforeLock = func(octx context.Context, conn *pgx.Conn) error {
		cancel()
		_, err := conn.Exec(octx, "SELECT pg_sleep(0.1)")
		return err
	}
	_, err := commitOne(ctx, s, p, "cancelled")
	s.hooks.beforeLock = nil
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Update whose caller went away: %v, want %v", err, context.Canceled)
	}
	if v, err := commitOne(context.Background(), s, p, "after"); err != nil || v != 2 {
		t.Fatalf("commit after: version %d, %v; want version 2 (nothing of the cancelled Update committed)", v, err)
	}
	if n := s.pool.Stat().NewConnsCount(); n != conns {
		t.Errorf("%d connections opened after the cancel, want none", n-conns)
	}
}

// TestTimeout holds an Update's statement past Options.Timeout: the Update
// fails once, with an error wrapping store.ErrUnavailable that says so, and
// the store serves on.
func TestTimeout(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{Timeout: 300 * time.Millisecond})
	p := store.Partition{Name: "alice"}
	calls := 0
	s.hooks.beforeLock = func(octx context.Context, conn *pgx.Conn) error {
		calls++
		_, err := conn.Exec(octx, "SELECT pg_sleep(5)")
		return err
	}
	start := time.Now()
	_, err := commitOne(context.Background(), s, p, "slow")
	s.hooks.beforeLock = nil
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "did not answer within 300ms") {
		t.Fatalf("Update past the timeout: %v, want %v saying how long it waited", err, store.ErrUnavailable)
	}
	if calls != 1 {
		t.Errorf("the timed-out Update was tried %d times, want once", calls)
	}
	if waited := time.Since(start); waited > 4*time.Second {
		t.Errorf("the Update failed after %v, not at its timeout", waited)
	}
	// The store works on: a commit succeeds, at version 1 since the timed-out
	// Update never locked. On a loaded machine a commit can itself pass the
	// 300 ms timeout; each such one may have applied, and is tried again.
	deadline := time.Now().Add(20 * time.Second)
	for unknown := uint64(0); ; unknown++ {
		v, err := commitOne(context.Background(), s, p, "after")
		if err == nil {
			if v < 1 || v > 1+unknown {
				t.Fatalf("commit after the timeout: version %d after %d commits of unknown outcome; want 1 to %d", v, unknown, 1+unknown)
			}
			break
		}
		if !errors.Is(err, store.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("commit after the timeout: %v", err)
		}
	}
}

// commitAt commits entries to p at its next version, made at time at, and
// returns the version and whether fn's last run (the one committed) found
// key probe.
func commitAt(s *Store, p store.Partition, at time.Time, probe string, entries ...store.Entry) (v uint64, found bool, err error) {
	err = s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		if _, found, err = r.Get(probe); err != nil {
			return nil, err
		}
		v = h.Version + 1
		c := &store.Commit{Version: v, Time: at, Ops: []byte("ops")}
		for _, e := range entries {
			e.Version, e.ScalarVersion = v, v
			c.Entries = append(c.Entries, e)
		}
		return c, nil
	})
	return v, found, err
}

// heldCounts returns s's held commits: committed and moved.
func heldCounts(s *Store) (committed, moved int64) {
	return s.held.committed.Load(), s.held.moved.Load()
}

// TestHeldState commits through two stores on one schema, as two nodes:
// a store commits to a partition it holds in one statement; when the other
// has committed meanwhile, the statement writes nothing and the commit runs
// as a transaction on the partition as it is. Every commit lands once, in
// version order, in the entries and in the feed.
func TestHeldState(t *testing.T) {
	t.Parallel()
	a, b := twoStores(t)
	p := store.Partition{Name: "alice"}
	now := time.Now()
	put := func(k string) store.Entry { return store.Entry{Key: k, Value: []byte(k)} }

	if v, _, err := commitAt(a, p, now, "", put("a1")); err != nil || v != 1 {
		t.Fatalf("first commit: version %d, %v", v, err)
	}
	if v, _, err := commitAt(a, p, now, "", put("a2")); err != nil || v != 2 {
		t.Fatalf("second commit: version %d, %v", v, err)
	}
	if c, m := heldCounts(a); c != 1 || m != 0 {
		t.Errorf("after two commits: %d held commits and %d moved, want 1 and 0", c, m)
	}
	if v, _, err := commitAt(b, p, now, "", put("b3")); err != nil || v != 3 {
		t.Fatalf("other node's commit: version %d, %v", v, err)
	}
	// a's state is at version 2: its statement finds the head moved on.
	v, found, err := commitAt(a, p, now, "b3", put("a4"))
	if err != nil || v != 4 || !found {
		t.Fatalf("commit after the other node's: version %d, saw b3 %v, %v; want version 4 having seen b3", v, found, err)
	}
	if c, m := heldCounts(a); c != 1 || m != 1 {
		t.Errorf("after the other node's commit: %d held commits and %d moved, want 1 and 1", c, m)
	}
	// Another node commits to the partition: a holds none of it a while.
	if v, _, err := commitAt(a, p, now, "", put("a5")); err != nil || v != 5 {
		t.Fatalf("commit during the cool-down: version %d, %v", v, err)
	}
	if c, m := heldCounts(a); c != 1 || m != 1 {
		t.Errorf("during the cool-down: %d held commits and %d moved, want 1 and 1", c, m)
	}

	var keys []string
	err = b.View(context.Background(), p, func(r store.Reader) error {
		return r.Changes(0, func(e store.Entry) (bool, error) {
			keys = append(keys, fmt.Sprintf("%s@%d", e.Key, e.Version))
			return true, nil
		})
	})
	if want := []string{"a1@1", "a2@2", "b3@3", "a4@4", "a5@5"}; err != nil || !slices.Equal(keys, want) {
		t.Errorf("entries = %v, %v; want %v", keys, err, want)
	}
	waitFeed(t, b, 5, feedOf("alice"))
}

// TestReadAheadLost hands the read ahead's scan the rows pgx gives a
// query whose connection is gone (as a batch's rows are when the
// connection is lost between two of its results): no columns at all. The
// scan reports the rows' error instead of asking for their columns, which
// pgx cannot give and panics on.
func TestReadAheadLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	lost, _ := conn.Query(ctx, prefetchAll, "p")
	if err := (&prefetch{}).scan(lost); err == nil || err != lost.Err() {
		t.Errorf("read ahead on a lost connection: %v, want the rows' error %v", err, lost.Err())
	}
}

// TestViewPanics has a View's fn panic in the View's transaction, as a bug
// would in a request an HTTP server recovers from: the connection still
// goes back to the pool, and the next View has it.
func TestViewPanics(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{MaxConns: 1})
	ctx := context.Background()
	p := store.Partition{Name: "u"}
	func() {
		defer func() {
			if r := recover(); r != "fn's bug" {
				t.Errorf("recovered %v, want fn's panic", r)
			}
		}()
		_ = s.View(ctx, p, func(r store.Reader) error {
			if _, err := r.Head(); err != nil {
				t.Error(err)
			}
			panic("fn's bug")
		})
	}()
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.View(vctx, p, func(r store.Reader) error { _, err := r.Head(); return err }); err != nil {
		t.Fatalf("a View after one whose fn panicked, on a pool of one connection: %v", err)
	}
}

// TestHeldStateSize writes a key of its own in each commit to partitions,
// each through a store of its own: every commit after the first is written
// on a held state. Up to holdRows entries and holdBytes of values the state
// is the whole partition; past that size it is sparse, reads what it lacks
// (here, once: the key each commit probes) and, past those bounds again,
// starts over from its last commit. The Updates of a partition with a sparse
// state read only prefetchRows ahead.
func TestHeldStateSize(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	const bigValue = 3 << 10 // 21 of them fit in holdBytes, 22 do not
	for _, tc := range []struct {
		name       string
		commits    int
		valueBytes int
		sparse     bool
		reads      int64
		readsAhead int
	}{
		{"forty", 40, 4, false, 0, holdRows},
		// Commits 2 to holdRows+1 are on the whole state; the last of
		// them leaves a sparse state of its own key, and the next one
		// reads the key it probes.
		{"three hundred", 300, 4, true, 1, prefetchRows},
		// The sparse state passes holdRows entries with commit 512, and
		// starts over: commit 513 reads the probed key again.
		{"six hundred", 600, 4, true, 2, prefetchRows},
		// Commits 2 to 22 are on the whole state, of 1 to 21 values; the
		// 22nd leaves the partition past holdBytes, and a sparse state.
		{"big values", 30, bigValue, true, 1, prefetchRows},
	} {
		s := openSchema(t, schema, Options{})
		p := store.Partition{Name: tc.name}
		for i := 1; i <= tc.commits; i++ {
			k := fmt.Sprintf("k%03d", i)
			val := []byte(fmt.Sprintf("%0*d", tc.valueBytes, i))
			if v, _, err := commitAt(s, p, time.Now(), "", store.Entry{Key: k, Value: val}); err != nil || v != uint64(i) {
				t.Fatalf("%s: commit %d: version %d, %v", tc.name, i, v, err)
			}
		}
		if c, m := heldCounts(s); c != int64(tc.commits-1) || m != 0 {
			t.Errorf("%s: %d commits of one new key each: %d held and %d moved, want %d and 0", tc.name, tc.commits, c, m, tc.commits-1)
		}
		if got := s.held.readsDone.Load(); got != tc.reads {
			t.Errorf("%s: %d reads of what a sparse state lacked, want %d", tc.name, got, tc.reads)
		}
		st := s.held.states.get(partID(p))
		if st == nil || (st.sp != nil) != tc.sparse {
			t.Fatalf("%s: the state held after %d commits is %+v, want a sparse one %v", tc.name, tc.commits, st, tc.sparse)
		}
		if st.sp != nil && len(st.sp.entries) > holdRows {
			t.Errorf("%s: the sparse state knows %d entries, over %d", tc.name, len(st.sp.entries), holdRows)
		}
		if got := s.held.states.readAheadRows(partID(p)); got != tc.readsAhead {
			t.Errorf("%s: the next Update reads %d rows ahead, want %d", tc.name, got, tc.readsAhead)
		}
	}
}

// TestHeldStateCompacted drops a tombstone below the horizon, as retention
// does when commit clocks disagree: the horizon stays, the compaction count
// moves, and a store holding the tombstone commits on the partition as it
// is, without it.
func TestHeldStateCompacted(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	a := openSchema(t, schema, Options{})
	a.held.states.coolFor = 0 // hold the partition again at once after the first compaction
	b := openSchema(t, schema, Options{})
	p := store.Partition{Name: "bob"}
	now := time.Now()
	tomb := func(k string) store.Entry { return store.Entry{Key: k, Deleted: true} }
	if _, _, err := commitAt(a, p, now, "", tomb("recent")); err != nil { // version 1
		t.Fatal(err)
	}
	if _, _, err := commitAt(a, p, now.Add(-3*time.Hour), "", tomb("old")); err != nil { // version 2, an older clock
		t.Fatal(err)
	}
	if _, err := b.Compact(context.Background(), now.Add(-time.Hour)); err != nil { // drops "old": horizon 2
		t.Fatal(err)
	}
	// a's state has horizon 0: this commit runs as a transaction, and a
	// holds the partition afresh, "recent" at version 1 included.
	if _, found, err := commitAt(a, p, now, "recent", store.Entry{Key: "live", Value: []byte("x")}); err != nil || !found {
		t.Fatalf("commit after the first compaction: saw the tombstone %v, %v; want it seen", found, err)
	}
	if _, err := b.Compact(context.Background(), now.Add(time.Hour)); err != nil { // drops "recent", below the horizon
		t.Fatal(err)
	}
	moved := a.held.moved.Load()
	if _, found, err := commitAt(a, p, now, "recent", store.Entry{Key: "live", Value: []byte("y")}); err != nil || found {
		t.Fatalf("commit after the second compaction: saw the dropped tombstone %v, %v; want it gone", found, err)
	}
	if a.held.moved.Load() != moved+1 {
		t.Errorf("the held commit after the compaction was not refused")
	}
}

// TestHeldStateMatchesStore commits puts, deletes and keys written again
// to a partition through one store, and checks after each commit that the state
// it holds is what a fresh read of the partition finds: the entries, their
// versions and values, and the device records.
func TestHeldStateMatchesStore(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{})
	p := store.Partition{Name: "carol"}
	part := partID(p)
	for i := 1; i <= 40; i++ {
		v := uint64(i)
		c := &store.Commit{Version: v, Time: time.Now(), Ops: []byte("ops"), Device: fmt.Sprint("dev", i%3), Batch: v}
		for j := range i%4 + 1 {
			k := fmt.Sprint("k", (i*7+j*2)%9)
			if (i+j)%5 == 0 {
				c.Entries = append(c.Entries, store.Entry{Key: k, Deleted: true, Version: v, ScalarVersion: v})
			} else {
				c.Entries = append(c.Entries, store.Entry{Key: k, Value: fmt.Appendf(nil, "%d.%d", i, j), Version: v, ScalarVersion: v - uint64(j%2)})
			}
		}
		if i%6 == 0 {
			c.Entries = append(c.Entries, store.Entry{Key: "empty", Version: v, ScalarVersion: v}) // live, no value: stored as an empty one
		}
		err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) { return c, nil })
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		st := s.held.states.get(part)
		if st == nil {
			t.Fatalf("after commit %d the store holds no state of %s", i, p)
		}
		var want []store.Entry
		devices := make(map[string]uint64)
		err = s.View(context.Background(), p, func(r store.Reader) error {
			if h, err := r.Head(); err != nil || h != st.head {
				return fmt.Errorf("head %+v, %v; the state holds %+v", h, err, st.head)
			}
			for d := range 3 {
				b, err := r.DeviceBatch(fmt.Sprint("dev", d))
				if err != nil {
					return err
				}
				if b != 0 {
					devices[fmt.Sprint("dev", d)] = b
				}
			}
			return r.Changes(0, func(e store.Entry) (bool, error) {
				want = append(want, e)
				return true, nil
			})
		})
		if err != nil {
			t.Fatalf("after commit %d: %v", i, err)
		}
		slices.SortFunc(want, func(a, b store.Entry) int { return strings.Compare(a.Key, b.Key) })
		if got := fmt.Sprintf("%+v", st.pf.entries); got != fmt.Sprintf("%+v", want) {
			t.Fatalf("after commit %d the held entries are\n%s\nthe store's\n%+v", i, got, want)
		}
		for _, e := range st.pf.entries {
			if (e.Value == nil) != e.Deleted {
				t.Fatalf("after commit %d the held entry %q has value %v and deleted %v: a live entry has a value, if empty, and a tombstone none", i, e.Key, e.Value, e.Deleted)
			}
		}
		if fmt.Sprint(st.pf.devices) != fmt.Sprint(devices) {
			t.Fatalf("after commit %d the held devices are %v, the store's %v", i, st.pf.devices, devices)
		}
	}
	if c, m := heldCounts(s); c != 39 || m != 0 {
		t.Errorf("%d held commits and %d moved, want 39 and 0", c, m)
	}
}

// TestStateCacheBudget fills a state cache past its budget: it stays within
// it, a state too big for it is not held, and neither is one of a partition
// that cools down.
func TestStateCacheBudget(t *testing.T) {
	c := newStateCache(10_000, time.Now)
	for i := range 100 {
		c.hold(fmt.Sprint("u:", i), &partState{pf: &prefetch{}, size: 1_000})
		if c.size > c.budget {
			t.Fatalf("after %d states the cache holds %d bytes, over its budget of %d", i+1, c.size, c.budget)
		}
	}
	if n := c.len(); n != 10 {
		t.Errorf("the cache holds %d states of 1,000 bytes in 10,000, want 10", n)
	}
	c.hold("u:big", &partState{pf: &prefetch{}, size: 5_000})
	if c.get("u:big") != nil {
		t.Errorf("a state of half the budget was held")
	}
	c.hold("u:99", nil)
	if c.get("u:99") != nil {
		t.Errorf("a forgotten state is still held")
	}
	small := &partState{pf: &prefetch{}, size: 1_000}
	c.coolDown("u:98")
	c.hold("u:98", small)
	if c.get("u:98") != nil {
		t.Errorf("a state was held during its partition's cool-down")
	}
	c.hold("u:98", nil)
	c.hold("u:98", small)
	if c.get("u:98") != nil {
		t.Errorf("forgetting a cooling partition's state ended the cool-down")
	}
	c.coolFor = 0
	c.coolDown("u:97")
	c.hold("u:97", small)
	if c.get("u:97") == nil {
		t.Errorf("with no cool-down, a state was not held again")
	}
	off := newStateCache(-1, time.Now)
	off.hold("u:x", &partState{pf: &prefetch{}, size: 1})
	if off.get("u:x") != nil || off.len() != 0 {
		t.Errorf("a cache with no budget held a state")
	}
}

// TestHeldStateTakingTurns has two stores commit to one partition in turn,
// as nodes behind a balancer that spreads one device's requests: after the
// first commit that finds the head moved, neither tries a held state again
// for a while, so the turns cost no wasted statements.
func TestHeldStateTakingTurns(t *testing.T) {
	t.Parallel()
	a, b := twoStores(t)
	p := store.Partition{Name: "dave"}
	for i := 1; i <= 20; i++ {
		s := a
		if i%2 == 0 {
			s = b
		}
		if v, _, err := commitAt(s, p, time.Now(), "", store.Entry{Key: "k", Value: []byte{byte(i)}}); err != nil || v != uint64(i) {
			t.Fatalf("commit %d: version %d, %v", i, v, err)
		}
	}
	_, ma := heldCounts(a)
	_, mb := heldCounts(b)
	if ma+mb > 2 {
		t.Errorf("%d held commits found the head moved over 20 turns, want at most one a store", ma+mb)
	}
}

// TestHeldStateRace has two stores, each with four goroutines, commit to
// one small partition at once with no cool-down, so held commits race each
// other and the other store's: every commit lands once at its own version,
// and each key ends as the highest version that wrote it left it. Most held
// commits find the head moved or locked; each goroutine commits on until
// some were written too, so the race takes both ways.
func TestHeldStateRace(t *testing.T) {
	t.Parallel()
	schema, _ := pgtest.Schema(t)
	stores := []*Store{openSchema(t, schema, Options{}), openSchema(t, schema, Options{})}
	for _, s := range stores {
		s.held.states.coolFor = 0
	}
	p := store.Partition{Name: "grace"}
	const least, most = 25, 500
	bothWays := func() bool {
		var held, moved int64
		for _, s := range stores {
			c, m := heldCounts(s)
			held, moved = held+c, moved+m
		}
		return held > 0 && moved > 0
	}
	type write struct {
		key, val string
	}
	var mu sync.Mutex
	wrote := make(map[uint64]write)
	var wg sync.WaitGroup
	for i, s := range stores {
		for g := range 4 {
			wg.Go(func() {
				for j := 0; j < most && (j < least || !bothWays()); j++ {
					w := write{fmt.Sprint("k", (g+j)%4), fmt.Sprintf("s%d.g%d.%d", i, g, j)}
					v, _, err := commitAt(s, p, time.Now(), "", store.Entry{Key: w.key, Value: []byte(w.val)})
					if err != nil {
						t.Errorf("store %d: %v", i, err)
						return
					}
					mu.Lock()
					if old, dup := wrote[v]; dup {
						t.Errorf("version %d committed twice: %v and %v", v, old, w)
					}
					wrote[v] = w
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	total := uint64(len(wrote))
	if total < uint64(len(stores)*4*least) {
		t.Fatalf("%d versions committed, want at least %d", total, len(stores)*4*least)
	}
	want := make(map[string]string)
	for v := uint64(1); v <= total; v++ {
		w, ok := wrote[v]
		if !ok {
			t.Fatalf("no commit at version %d", v)
		}
		want[w.key] = fmt.Sprintf("%s@%d", w.val, v)
	}
	got := make(map[string]string)
	err := stores[0].View(context.Background(), p, func(r store.Reader) error {
		return r.Changes(0, func(e store.Entry) (bool, error) {
			got[e.Key] = fmt.Sprintf("%s@%d", e.Value, e.Version)
			return true, nil
		})
	})
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("entries = %v, %v; want %v", got, err, want)
	}
	var held, moved int64
	for _, s := range stores {
		c, m := heldCounts(s)
		held, moved = held+c, moved+m
	}
	t.Logf("%d held commits, %d found the head moved", held, moved)
	if held == 0 || moved == 0 {
		t.Errorf("%d held commits and %d moved: the race did not take both ways", held, moved)
	}
	waitFeed(t, stores[1], int(total), feedOf("grace"))
}

// TestOptionsRefused checks that Open refuses options it cannot use,
// saying which, before it connects.
func TestOptionsRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{NotifyInterval: -time.Second}, "notify interval -1s is negative"},
		{Options{MaxConns: -1}, "max conns -1 is negative"},
		{Options{CheckInterval: -time.Second}, "check interval -1s is negative"},
	} {
		// Nothing listens at this address: an Open that connected would
		// fail otherwise.
		s, err := Open(context.Background(), "postgres://nobody@127.0.0.1:1/none", tc.opts)
		if s != nil {
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open with %+v = %v, want an error saying %q", tc.opts, err, tc.want)
		}
	}
}
