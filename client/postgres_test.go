package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/client"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/wait"
)

// TestPostgresDelayed syncs a replica through a node over PostgreSQL whose
// connection is delayed past the node's --store-timeout: the sync fails as
// the server being unavailable, the replica keeps its write pending and
// reports itself offline, and once the delay lifts its next sync applies
// the write, once. PostgreSQL is one of the test's own: the delayed
// transactions would stall the change feed of other tests on a shared one.
func TestPostgresDelayed(t *testing.T) {
	t.Parallel()
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	_, direct := pgtest.SchemaOn(t, pg.URL)
	proxy, delayed := pgtest.NewProxy(t, direct)
	srv := startServer(t, "--store", delayed, "--store-timeout", "500ms")
	r, _ := device(t, srv, "phone", "frank", client.Options{})
	if err := r.Put("before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	mustSync(t, r)

	proxy.SetDelay(2 * time.Second)
	if err := r.Put("during", []byte("2")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Sync(ctx)
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable {
		t.Fatalf("sync while PostgreSQL is 2s away = %v, want unavailable", err)
	}
	if st := r.Status(); st.Pending != 1 || st.Online {
		t.Errorf("after the failed sync: %d pending, online %v; want the write pending and offline", st.Pending, st.Online)
	}

	proxy.SetDelay(0)
	wait.For(t, 30*time.Second, func() error { return r.Sync(ctx) })
	if st := r.Status(); st.Pending != 0 || !st.Online {
		t.Errorf("after the delay: %d pending, online %v; want none pending and online", st.Pending, st.Online)
	}
	state, version := srv.state(t, "frank")
	if show(state["before"]) != `"1"` || show(state["during"]) != `"2"` || version != 2 {
		t.Errorf("server state = before %s, during %s at version %d; want \"1\", \"2\" at version 2 (each write once)",
			show(state["before"]), show(state["during"]), version)
	}
}
