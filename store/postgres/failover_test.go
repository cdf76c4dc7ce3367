package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/store"
)

// throwaway starts a PostgreSQL server of the test's own, with synchronous
// commits (a commit waits for the synchronous standbys named), stopped when
// the test ends.
func throwaway(t *testing.T) *pgtest.Throwaway {
	t.Helper()
	srv, err := pgtest.StartDurable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return srv
}

// queryInt runs a query of one integer on the database at u.
func queryInt(t *testing.T, u, sql string) int64 {
	t.Helper()
	var n int64
	pgtest.QueryOn(t, u, sql, &n)
	return n
}

// feedAfter reads the feed after pos once, and returns the records as
// "partition@version" and the last position.
func feedAfter(ctx context.Context, s *Store, pos store.FeedPos) ([]string, store.FeedPos, error) {
	var got []string
	err := s.Feed(ctx, pos, func(r store.FeedRecord) (bool, error) {
		got = append(got, fmt.Sprintf("%s@%d", r.Partition, r.Version))
		pos = r.Pos
		return true, nil
	})
	return got, pos, err
}

// TestFeedAcrossFailover promotes a standby that never received the old
// primary's last commits. The promoted standby gives out again the
// transaction ids of those commits, and a reader that resumes from the
// cursor the old primary gave it after them must still get the commits the
// new primary makes.
func TestFeedAcrossFailover(t *testing.T) {
	t.Parallel()
	primary := throwaway(t)
	standby, err := primary.Standby()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Stop)
	ctx := context.Background()
	p, q := store.Partition{Name: "p"}, store.Partition{Name: "q"}

	old := openURL(t, primary.URL, Options{})
	if _, err := commitOne(ctx, old, p, "a"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, func() error {
		at := queryInt(t, primary.URL, "SELECT pg_current_wal_lsn() - '0/0'")
		if replayed := queryInt(t, standby.URL, "SELECT pg_last_wal_replay_lsn() - '0/0'"); replayed < at {
			return fmt.Errorf("the standby replayed up to %d of %d", replayed, at)
		}
		return nil
	})
	if err := standby.Halt(); err != nil {
		t.Fatal(err)
	}
	// Commits the standby never gets.
	for range 20 {
		if _, err := commitOne(ctx, old, q, "b"); err != nil {
			t.Fatal(err)
		}
	}
	lost := queryInt(t, primary.URL, "SELECT pg_current_xact_id()::text::bigint")
	got, cursor, err := feedAfter(ctx, old, "")
	if err != nil || len(got) != 21 {
		t.Fatalf("the old primary's feed = %q, %v; want p@1 and q@1 to q@20", got, err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if err := primary.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := standby.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(); err != nil {
		t.Fatal(err)
	}

	promoted := openURL(t, standby.URL, Options{})
	if v, err := commitOne(ctx, promoted, p, "c"); err != nil || v != 2 {
		t.Fatalf("commit on the promoted standby = version %d, %v; want 2", v, err)
	}
	if again := queryInt(t, standby.URL, "SELECT pg_current_xact_id()::text::bigint"); again >= lost {
		t.Fatalf("the promoted standby gives transaction id %d, not one the old primary gave (up to %d): the test tests nothing", again, lost)
	}
	wait.For(t, 20*time.Second, func() error {
		got, _, err := feedAfter(ctx, promoted, cursor)
		if err != nil {
			return err
		}
		if !slices.Equal(got, []string{"user:p@2"}) {
			return fmt.Errorf("the feed after the old primary's cursor = %q, want [user:p@2]", got)
		}
		return nil
	})
}

// TestReadsWaitForStandby has a commit wait for a synchronous standby that
// never comes, then cancels its wait: the commit is visible on the primary,
// which alone has it. Neither the commit's own answer, nor the feed, nor an
// Update that answers without committing (a device's retry of that batch),
// nor a View may tell of it until a standby has it, here until the primary
// no longer waits for one.
func TestReadsWaitForStandby(t *testing.T) {
	t.Parallel()
	srv := throwaway(t)
	s := openURL(t, srv.URL, Options{Timeout: 3 * time.Second})
	ctx := context.Background()
	p := store.Partition{Name: "p"}
	if _, err := commitOne(ctx, s, p, "a"); err != nil {
		t.Fatal(err)
	}
	got, cursor, err := feedAfter(ctx, s, "")
	if err != nil || !slices.Equal(got, []string{"user:p@1"}) {
		t.Fatalf("feed = %q, %v; want [user:p@1]", got, err)
	}

	setStandbys(t, srv.URL, "'nobody'")
	// A probe's commit that waits shows the setting in force.
	probe, _ := commitWaiting(t, srv.URL, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, srv.URL)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, "SELECT pg_logical_emit_message(true, 'probe', '')")
		return err
	})
	<-probe
	// Version 2 is written by the group statement on the state the store
	// holds, version 3 (under an idempotency key, which a held state
	// cannot check) by a transaction of its own.
	for _, idem := range []string{"", "k"} {
		done, pid := commitWaiting(t, srv.URL, func(ctx context.Context) error {
			return s.Update(ctx, p, func(r store.Reader) (*store.Commit, error) {
				h, err := r.Head()
				if err != nil {
					return nil, err
				}
				v := h.Version + 1
				return &store.Commit{Version: v, Time: time.Now(), IdempotencyKey: idem, Entries: []store.Entry{
					{Key: "b", Value: []byte("x"), Version: v, ScalarVersion: v},
				}}, nil
			})
		})
		if err := <-done; !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("a commit (idempotency key %q) whose wait for the standby was cancelled (backend %d) = %v, want an error wrapping ErrUnavailable: its outcome is unknown", idem, pid, err)
		}
	}
	if n := queryInt(t, srv.URL, "SELECT count(*) FROM dalv_feed WHERE version IN (2, 3)"); n != 2 {
		t.Fatalf("the primary shows %d records of versions 2 and 3, want the two committed only there", n)
	}

	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	got, _, err = feedAfter(rctx, s, cursor)
	cancel()
	if len(got) != 0 || err == nil {
		t.Fatalf("feed while no standby has versions 2 and 3 = %q, %v; want nothing, and the reader's deadline", got, err)
	}
	answer := func(ctx context.Context) (uint64, error) {
		var seen uint64
		err := s.Update(ctx, p, func(r store.Reader) (*store.Commit, error) {
			h, err := r.Head()
			seen = h.Version
			return nil, err
		})
		return seen, err
	}
	view := func(ctx context.Context) (uint64, error) {
		var seen uint64
		err := s.View(ctx, p, func(r store.Reader) error {
			h, err := r.Head()
			seen = h.Version
			return err
		})
		return seen, err
	}
	for what, read := range map[string]func(context.Context) (uint64, error){"an Update": answer, "a View": view} {
		rctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		seen, err := read(rctx)
		cancel()
		if err == nil {
			t.Fatalf("%s that read version %d while no standby has it answered", what, seen)
		}
	}

	setStandbys(t, srv.URL, "''")
	wait.For(t, 20*time.Second, func() error {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		got, _, err := feedAfter(rctx, s, cursor)
		if err != nil || !slices.Equal(got, []string{"user:p@2", "user:p@3"}) {
			return fmt.Errorf("feed once no standby is waited for = %q, %v; want [user:p@2 user:p@3]", got, err)
		}
		return nil
	})
	for what, read := range map[string]func(context.Context) (uint64, error){"an Update": answer, "a View": view} {
		if seen, err := read(ctx); err != nil || seen != 3 {
			t.Fatalf("%s once no standby is waited for: read version %d, %v; want 3", what, seen, err)
		}
	}
}

// setStandbys sets the server's synchronous_standby_names and reloads its
// configuration.
func setStandbys(t *testing.T, u, names string) {
	t.Helper()
	pgtest.ExecOn(t, u, "ALTER SYSTEM SET synchronous_standby_names = "+names)
	pgtest.ExecOn(t, u, "SELECT pg_reload_conf()")
}

// commitWaiting runs commit, each time anew, until a backend waits in it
// for a synchronous standby (a commit that ends first ran before the
// server's processes took the setting), then cancels that backend's wait.
// It returns the outcome of the commit that waited, to come, and the
// backend's process id.
func commitWaiting(t *testing.T, u string, commit func(context.Context) error) (<-chan error, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	var (
		done chan error
		pid  int64
	)
	wait.For(t, 30*time.Second, func() error {
		if done == nil {
			done = make(chan error, 1)
			go func() { done <- commit(ctx) }()
		}
		select {
		case err := <-done:
			done = nil
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("a commit before the setting took: %w", err)
			}
			return errors.New("a commit ended without waiting for a standby")
		default:
		}
		pid = queryInt(t, u, "SELECT COALESCE(max(pid), 0) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
		if pid == 0 {
			return errors.New("no backend waits for a standby yet")
		}
		return nil
	})
	if queryInt(t, u, fmt.Sprintf("SELECT pg_cancel_backend(%d)::int", pid)) != 1 {
		t.Fatalf("cancel backend %d: not signalled", pid)
	}
	return done, pid
}

// TestStandbyWaitsShared checks that one statement serves any number of
// Views' waits for the standbys: 200 waits queued while one runs go in the
// next statement, all of them.
func TestStandbyWaitsShared(t *testing.T) {
	t.Parallel()
	s := openFresh(t, Options{})
	run := s.standbyWaits.run
	var statements atomic.Int64
	s.standbyWaits.run = func(batch []*standbyWait) {
		statements.Add(1)
		run(batch)
	}
	errs := inOneBatch(t, &s.standbyWaits, 200, func(int) error { return s.waitStandbys(context.Background()) })
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n := statements.Load(); n != 1 {
		t.Fatalf("200 waits took %d statements, want 1", n)
	}
}
