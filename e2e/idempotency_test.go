package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file tests backend commits under an idempotency key: a retry of a
// commit whose answer was lost applies nothing and answers as the first
// success, on the embedded store and over PostgreSQL with the connection
// cut while the commit is in flight.

func keyedCommit(user, key string, o ...*dalvv1.Op) *connect.Request[dalvv1.CommitRequest] {
	return connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: o, IdempotencyKey: key})
}

// TestBackendCommitIdempotencyKey retries backend commits whose answers
// were lost, on the embedded store and over PostgreSQL: with a key the
// retry answers the first version and applies nothing; without one it
// applies again.
func TestBackendCommitIdempotencyKey(t *testing.T) {
	t.Parallel()
	t.Run("Embedded", func(t *testing.T) {
		t.Parallel()
		testCommitIdempotencyKey(t, startServer(t))
	})
	t.Run("Postgres", func(t *testing.T) {
		t.Parallel()
		_, u := pgtest.SchemaOn(t, pgtest.Server(t))
		testCommitIdempotencyKey(t, startServer(t, "--store", u))
	})
}

func testCommitIdempotencyKey(t *testing.T, srv *proc.Server) {
	b := backendClient(t, srv)
	commitV := func(req *connect.Request[dalvv1.CommitRequest]) uint64 {
		t.Helper()
		resp, err := b.Commit(ctx(t), req)
		if err != nil {
			t.Fatalf("Commit(%s, key %q): %v", req.Msg.GetUser(), req.Msg.GetIdempotencyKey(), err)
		}
		return resp.Msg.GetVersion()
	}

	first := commitV(keyedCommit("alice", "order-1", opAdd("log", "e1"), opPut("n", "1")))
	for range 3 {
		if got := commitV(keyedCommit("alice", "order-1", opAdd("log", "e1"), opPut("n", "1"))); got != first {
			t.Fatalf("retry with the key answered version %d, want the first answer's %d", got, first)
		}
	}
	wantPartition(t, b, "alice", partition{1, []string{"log=[e1]@1", "n=1@1"}})

	// A later commit moves on; the old key still answers its own version,
	// even with the expected version it had, which is stale by now.
	zero := uint64(0)
	req := func() *connect.Request[dalvv1.CommitRequest] {
		return connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opAdd("log", "e2")), ExpectedVersion: &zero, IdempotencyKey: "order-2"})
	}
	wantError(t, func() error { _, err := b.Commit(ctx(t), req()); return err }(), connect.CodeFailedPrecondition, "expectedVersion is 0")
	one := uint64(1)
	if got := commitV(connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opAdd("log", "e2")), ExpectedVersion: &one, IdempotencyKey: "order-2"})); got != 2 {
		t.Fatalf("commit with a fresh key = version %d, want 2", got)
	}
	if got := commitV(connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opAdd("log", "e2")), ExpectedVersion: &one, IdempotencyKey: "order-2"})); got != 2 {
		t.Fatalf("retry of a conditional commit = version %d, want 2", got)
	}
	if got := commitV(keyedCommit("alice", "order-1", opAdd("log", "e1"), opPut("n", "1"))); got != first {
		t.Fatalf("retry of the first key after another commit = version %d, want %d", got, first)
	}
	wantPartition(t, b, "alice", partition{2, []string{"log=[e1 e2]@2", "n=1@1"}})

	// The same key on another partition is another commit.
	if got := commitV(keyedCommit("bob", "order-1", opAdd("log", "e1"))); got != 1 {
		t.Fatalf("bob's commit under alice's key = version %d, want 1", got)
	}

	// A key reused for other ops, and keys out of bounds, are refused and
	// change nothing.
	for _, tc := range []struct {
		name, key string
		code      connect.Code
		words     []string
	}{
		{"ReusedForOtherOps", "order-1", connect.CodeFailedPrecondition, []string{"order-1", "version 1", "new key"}},
		{"TooLong", strings.Repeat("k", 129), connect.CodeInvalidArgument, []string{"129 bytes", "128"}},
		{"ControlCharacter", "order\n3", connect.CodeInvalidArgument, []string{"printable ASCII"}},
		{"NotASCII", "ordre-é", connect.CodeInvalidArgument, []string{"printable ASCII"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refused(t, b, "alice", func() error {
				_, err := b.Commit(ctx(t), keyedCommit("alice", tc.key, opAdd("log", "other")))
				return err
			}, tc.code, tc.words...)
		})
	}
	if got := commitV(keyedCommit("alice", strings.Repeat("~", 128), opAdd("log", "e3"))); got != 3 {
		t.Fatalf("commit under a 128-byte key = version %d, want 3", got)
	}

	// Without a key, the same retry applies again: the key is what stops it.
	v1 := commitV(connect.NewRequest(&dalvv1.CommitRequest{User: "carol", Ops: ops(opAdd("log", "e1"))}))
	v2 := commitV(connect.NewRequest(&dalvv1.CommitRequest{User: "carol", Ops: ops(opAdd("log", "e1"))}))
	if v1 != 1 || v2 != 2 {
		t.Fatalf("a retry without a key answered versions %d then %d, want 1 then 2 (a second commit)", v1, v2)
	}

	// dalv put takes a key to rerun with, and its own retries reuse it.
	env := cliEnv(srv)
	out1 := cliOK(t, env, "put", "dave", "log", "e1", "--list-add", "--idempotency-key", "put-1")
	out2 := cliOK(t, env, "put", "dave", "log", "e1", "--list-add", "--idempotency-key", "put-1")
	if out1 != "committed version 1\n" || out2 != out1 {
		t.Fatalf("dalv put twice with one key printed %q then %q, want \"committed version 1\" twice", out1, out2)
	}
	cliFails(t, env, "", []string{"put", "dave", "log", "e1", "--idempotency-key", "bad\tkey"}, "printable ASCII")
	// put takes JSON: the bare word e1 is stored as the JSON string "e1".
	wantPartition(t, b, "dave", partition{1, []string{`log=["e1"]@1`}})
}

// TestPostgresCommitCutMidCommit cuts a node's connections to PostgreSQL
// while a backend Commit's COMMIT is in flight: PostgreSQL commits, the
// node cannot know, and the backend gets unavailable. Retried with its
// idempotency key, the commit applies once and answers the first version;
// the control retried without a key applies twice.
func TestPostgresCommitCutMidCommit(t *testing.T) {
	t.Parallel()
	base := pgtest.Server(t)
	schema, direct := pgtest.SchemaOn(t, base)
	proxy, cut := pgtest.NewProxy(t, direct)
	app := schema + "-cut"
	srv := startServer(t, "--store", pgtest.WithParam(cut, "application_name", app), "--heartbeat", "2s")
	b := backendClient(t, srv)

	// A commit that writes a feed row while the test has armed the trap
	// sleeps at COMMIT (a deferred trigger), long enough for the test to
	// cut the connection; PostgreSQL then commits it all the same.
	for _, sql := range []string{
		`CREATE TABLE dalv_test_trap (armed boolean NOT NULL)`,
		`INSERT INTO dalv_test_trap VALUES (false)`,
		`CREATE FUNCTION dalv_test_trap() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			UPDATE dalv_test_trap SET armed = false WHERE armed;
			IF FOUND THEN PERFORM pg_sleep(3); END IF;
			RETURN NULL;
		END $$`,
		`CREATE CONSTRAINT TRIGGER dalv_test_trap AFTER INSERT ON dalv_feed
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dalv_test_trap()`,
	} {
		pgtest.ExecOn(t, direct, sql)
	}
	// cutCommit sends req with the trap armed, cuts the node's connections
	// once the commit sleeps in its COMMIT and keeps PostgreSQL out of its
	// reach, and returns the Commit's error.
	cutCommit := func(req *connect.Request[dalvv1.CommitRequest]) error {
		t.Helper()
		pgtest.ExecOn(t, direct, `UPDATE dalv_test_trap SET armed = true`)
		done := make(chan error, 1)
		go func() {
			_, err := b.Commit(ctx(t), req)
			done <- err
		}()
		wait.ForEvery(t, 30*time.Second, 5*time.Millisecond, func() error {
			c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := pgxConnect(c, base)
			if err != nil {
				return err
			}
			defer conn.Close(c)
			var n int
			if err := conn.QueryRow(c, `SELECT count(*) FROM pg_stat_activity
				WHERE application_name = $1 AND wait_event = 'PgSleep'`, app).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return errors.New("no commit of the node sleeps at COMMIT yet")
			}
			return nil
		})
		if n := proxy.SetDown(true); n == 0 {
			t.Fatal("the proxy had no connection to cut")
		}
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("the Commit did not answer within 30s of the cut")
			return nil
		}
	}
	// applied waits until user's partition's head is at version want in
	// PostgreSQL (the cut commit lands when its COMMIT finishes), reading
	// it directly: the node cannot reach PostgreSQL yet.
	applied := func(user string, want uint64) {
		t.Helper()
		pgWaitFor(t, direct, func(c context.Context, conn *pgx.Conn) error {
			var v int64
			err := conn.QueryRow(c, `SELECT COALESCE(max(version), 0) FROM dalv_heads WHERE part = $1`, "u:"+user).Scan(&v)
			if err == nil && uint64(v) != want {
				err = fmt.Errorf("partition %s is at version %d in PostgreSQL, want %d", user, v, want)
			}
			return err
		})
	}
	retry := func(req *connect.Request[dalvv1.CommitRequest]) uint64 {
		t.Helper()
		var version uint64
		wait.ForEvery(t, 30*time.Second, 50*time.Millisecond, func() error {
			resp, err := b.Commit(ctx(t), connect.NewRequest(req.Msg))
			if err != nil {
				if connect.CodeOf(err) == connect.CodeUnavailable {
					return err // the node reconnects by itself
				}
				t.Fatalf("retry: %v", err)
			}
			version = resp.Msg.GetVersion()
			return nil
		})
		return version
	}

	for _, tc := range []struct {
		name, user, key string
		wantRetry       uint64 // the retry's answer
		want            partition
	}{
		{"WithKey", "alice", "order-1", 1, partition{1, []string{"log=[e1]@1"}}},
		// The control: without a key the retry is a second commit.
		{"WithoutKey", "bob", "", 2, partition{2, []string{"log=[e1]@1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := keyedCommit(tc.user, tc.key, opAdd("log", "e1"))
			err := cutCommit(req)
			if got, want := codeOf(err), connect.CodeUnavailable.String(); got != want {
				t.Fatalf("Commit cut mid-commit answered %s (%v), want %s", got, err, want)
			}
			applied(tc.user, 1)
			proxy.SetDown(false)
			wantPartition(t, b, tc.user, partition{1, []string{"log=[e1]@1"}})
			if got := retry(req); got != tc.wantRetry {
				t.Errorf("the retry answered version %d, want %d", got, tc.wantRetry)
			}
			wantPartition(t, b, tc.user, tc.want)
		})
	}
}
