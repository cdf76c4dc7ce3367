package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/client"
)

// TestStatusTellsTheTruth: a refused token is not online and is kept as an
// unauthenticated error; a stopped server is unavailable; once the server
// is back with a good token the replica is online with no error.
func TestStatusTellsTheTruth(t *testing.T) {
	srv := startServer(t)
	good := true
	src := func(ctx context.Context) (string, error) {
		if good {
			return tokens("gina")(ctx)
		}
		return auth.Mint([]byte("another-secret-0123456789abcdef0123456789"), "gina", time.Hour, time.Now())
	}
	a, _ := device(t, srv, "a.db", "gina", client.Options{TokenSource: func(ctx context.Context) (string, error) { return src(ctx) }})
	good = false
	if err := a.Put("k", []byte(`"v"`)); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(context.Background()); err == nil {
		t.Fatal("sync with a forged token succeeded")
	}
	st := a.Status()
	if st.Online {
		t.Error("online after the server refused the token")
	}
	if st.LastError == nil || st.LastError.Kind != client.ErrorUnauthenticated {
		t.Fatalf("last error = %#v, want kind unauthenticated", st.LastError)
	}
	if got := st.LastError.Error(); !strings.Contains(got, "refused the token") || strings.Contains(got, "get config") {
		t.Errorf("last error message %q: want it readable, without internal wording", got)
	}
	if got, want := st.PendingOps, 1; got != want {
		t.Errorf("pending ops = %d, want %d", got, want)
	}

	good = true
	srv.stop()
	if err := a.Sync(context.Background()); err == nil {
		t.Fatal("sync with the server stopped succeeded")
	}
	st = a.Status()
	if st.Online || st.LastError == nil || st.LastError.Kind != client.ErrorUnavailable {
		t.Fatalf("server stopped: online %v, last error %#v; want offline and unavailable", st.Online, st.LastError)
	}
	var se *client.SyncError
	if !errors.As(error(st.LastError), &se) || se.Unwrap() == nil {
		t.Errorf("the cause is not kept: %#v", st.LastError)
	}

	srv.start()
	mustSync(t, a)
	st = a.Status()
	if !st.Online || st.LastError != nil || st.Pending != 0 || st.PendingOps != 0 {
		t.Errorf("after recovery: %+v; want online, no error, nothing pending", st)
	}
}

// TestWaitSynced: with the loop running, WaitSynced returns once the writes
// made before it are on the server; with a token the server refuses it
// returns that error instead of waiting.
func TestWaitSynced(t *testing.T) {
	srv := startServer(t)
	a, _ := device(t, srv, "a.db", "hank", client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, it := range []string{"a", "b", "c"} {
		if err := a.ListAdd("cart", []byte(it)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if st := a.Status(); st.Pending != 0 || !st.Online {
		t.Errorf("after WaitSynced: %+v", st)
	}
	if got, _ := srv.state(t, "hank"); show(got["cart"]) != "[a,b,c]" {
		t.Errorf("server holds cart %s after WaitSynced", show(got["cart"]))
	}
	// A backend write: WaitSynced pulls it too.
	srv.commit(t, "hank", put("note", `"hi"`))
	if err := a.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if got := getString(t, a, "note"); got != `"\"hi\""` {
		t.Errorf("after WaitSynced, note = %s", got)
	}

	forged := func(context.Context) (string, error) {
		return auth.Mint([]byte("another-secret-0123456789abcdef0123456789"), "ivy", time.Hour, time.Now())
	}
	b, _ := device(t, srv, "b.db", "ivy", client.Options{TokenSource: forged})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Put("k", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	err := b.WaitSynced(ctx)
	var se *client.SyncError
	if !errors.As(err, &se) || se.Kind != client.ErrorUnauthenticated {
		t.Fatalf("WaitSynced with a refused token: %v, want an unauthenticated SyncError", err)
	}
	if ctx.Err() != nil {
		t.Fatal("WaitSynced waited for the deadline")
	}
}
