package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/value"
)

const testBackendKey = "shop-test-backend-key-0123456789abcdef"

var (
	dalvOnce sync.Once
	dalvBin  string
	dalvErr  error
)

// startDalv starts a real `dalv serve` with the catalog shared, and returns
// a backend client for it.
func startDalv(t *testing.T) (string, dalvv1connect.BackendServiceClient) {
	t.Helper()
	dalvOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shop-test-bin-")
		if err != nil {
			dalvErr = err
			return
		}
		dalvBin, dalvErr = proc.Build(dir)
	})
	if dalvErr != nil {
		t.Fatal(dalvErr)
	}
	srv, err := proc.Start(t.Context(), proc.Options{
		Binary: dalvBin,
		Data:   t.TempDir(),
		Args:   []string{"--shared", catalog, "--heartbeat", "1s", "--rate-limit", "-1"},
		Env:    []string{"DALV_JWT_SECRET=shop-test-jwt-secret-0123456789abcdef", "DALV_BACKEND_KEYS=" + testBackendKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(10 * time.Second); err != nil {
			t.Errorf("stop dalv serve: %v", err)
		}
	})
	hc := &http.Client{Transport: auth.Bearer(testBackendKey, nil)}
	return srv.URL(), dalvv1connect.NewBackendServiceClient(hc, srv.URL())
}

// runBackend runs a backend until the returned stop is called; stop waits
// for it to end.
func runBackend(t *testing.T, url, cursor string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- newBackend(url, testBackendKey, cursor, nil).Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("backend: %v", err)
		}
	}
}

func commit(t *testing.T, c dalvv1connect.BackendServiceClient, user string, ops ...*dalvv1.Op) uint64 {
	t.Helper()
	resp, err := c.Commit(t.Context(), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops}))
	if err != nil {
		t.Fatalf("commit %s: %v", user, err)
	}
	return resp.Msg.Version
}

func listAdd(key, elem string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: key, Value: value.Scalar([]byte(elem))}
}

func listRemove(key, elem string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: key, Value: value.Scalar([]byte(elem))}
}

func putJSON(t *testing.T, key string, v any) *dalvv1.Op {
	t.Helper()
	jv, err := value.JSON(v)
	if err != nil {
		t.Fatal(err)
	}
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: jv}
}

// snapshot reads user's whole partition: key → value as JSON text or list.
func snapshot(t *testing.T, c dalvv1connect.BackendServiceClient, user string) (uint64, map[string]string) {
	t.Helper()
	resp, err := c.List(t.Context(), connect.NewRequest(&dalvv1.ListRequest{User: user, PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string)
	for _, it := range resp.Msg.Items {
		if l := it.GetValue().GetList(); l != nil {
			var s []string
			for _, b := range l.Items {
				s = append(s, string(b))
			}
			out[it.Key] = fmt.Sprint(s)
		} else {
			out[it.Key] = string(it.GetValue().GetScalar())
		}
	}
	return resp.Msg.Version, out
}

// pending reports whether a snapshot holds checkout requests.
func pending(kv map[string]string) bool {
	r, ok := kv[checkoutKey]
	return ok && r != "[]"
}

// orders reads user's orders.
func orders(t *testing.T, c dalvv1connect.BackendServiceClient, user string) map[string]Order {
	t.Helper()
	_, kv := snapshot(t, c, user)
	out := make(map[string]Order)
	for k, v := range kv {
		if len(k) > len(ordersPrefix) && k[:len(ordersPrefix)] == ordersPrefix {
			var o Order
			if err := json.Unmarshal([]byte(v), &o); err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			out[k[len(ordersPrefix):]] = o
		}
	}
	return out
}

func TestBackendCheckoutPlacesOneOrder(t *testing.T) {
	t.Parallel()
	url, c := startDalv(t)
	cursor := filepath.Join(t.TempDir(), "cursor")
	stop := runBackend(t, url, cursor)
	commit(t, c, "ann", listAdd(cartItemsKey, "mug-blue"), listAdd(cartItemsKey, "atlas"), putJSON(t, cartQtyPrefix+"mug-blue", 2), putJSON(t, prefsPrefix+"theme", "dark"))
	commit(t, c, "ann", listAdd(checkoutKey, "o-1"))
	wait.For(t, 10*time.Second, func() error {
		if _, kv := snapshot(t, c, "ann"); pending(kv) {
			return fmt.Errorf("request still pending: %v", kv)
		}
		return nil
	})
	stop()
	version, kv := snapshot(t, c, "ann")
	got := orders(t, c, "ann")
	want := []OrderItem{{Product: "mug-blue", Qty: 2}, {Product: "atlas", Qty: 1}}
	if len(got) != 1 || !slices.Equal(got["o-1"].Items, want) {
		t.Fatalf("orders = %+v, want one, o-1 with %v", got, want)
	}
	for _, k := range []string{cartItemsKey, cartQtyPrefix + "mug-blue"} {
		if _, ok := kv[k]; ok {
			t.Errorf("%s still in the cart after checkout: %v", k, kv)
		}
	}
	if kv[prefsPrefix+"theme"] != `"dark"` {
		t.Errorf("checkout changed what it does not own: %v", kv)
	}

	// The whole feed handled again, from its start: nothing changes.
	if err := os.WriteFile(cursor, []byte("start\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stop = runBackend(t, url, cursor)
	wait.For(t, 10*time.Second, func() error {
		b, err := os.ReadFile(cursor)
		if err != nil || string(b) == "start\n" {
			return fmt.Errorf("the backend has not read the feed again yet (%v)", err)
		}
		return nil
	})
	// An order placed after the replayed events shows the replay done.
	commit(t, c, "zed", listAdd(cartItemsKey, "tent"))
	commit(t, c, "zed", listAdd(checkoutKey, "o-z"))
	wait.For(t, 10*time.Second, func() error {
		if len(orders(t, c, "zed")) == 0 {
			return errors.New("zed has no order yet")
		}
		return nil
	})
	stop()
	again, kv2 := snapshot(t, c, "ann")
	if again != version || fmt.Sprint(kv2) != fmt.Sprint(kv) {
		t.Errorf("handling the feed again changed ann's data: version %d → %d\n%v\n%v", version, again, kv, kv2)
	}
}

func TestBackendFollowersAndTimeline(t *testing.T) {
	t.Parallel()
	url, c := startDalv(t)
	stop := runBackend(t, url, filepath.Join(t.TempDir(), "cursor"))
	defer stop()
	commit(t, c, "bob", listAdd(followingKey, "alice"))
	commit(t, c, "carol", listAdd(followingKey, "alice"))
	wait.For(t, 10*time.Second, func() error {
		if _, kv := snapshot(t, c, "alice"); kv[followersKey] != "[bob carol]" {
			return fmt.Errorf("alice's followers = %q", kv[followersKey])
		}
		return nil
	})
	commit(t, c, "alice", putJSON(t, postsPrefix+"p-1", Post{Text: "hello", At: 1}))
	for _, f := range []string{"bob", "carol"} {
		wait.For(t, 10*time.Second, func() error {
			if _, kv := snapshot(t, c, f); kv[timelinePrefix+"p-1"] != `{"author":"alice","text":"hello","at":1}` {
				return fmt.Errorf("%s's timeline: %v", f, kv)
			}
			return nil
		})
	}
	commit(t, c, "carol", listRemove(followingKey, "alice"))
	wait.For(t, 10*time.Second, func() error {
		if _, kv := snapshot(t, c, "alice"); kv[followersKey] != "[bob]" {
			return fmt.Errorf("alice's followers = %q after carol unfollowed", kv[followersKey])
		}
		return nil
	})
	commit(t, c, "alice", putJSON(t, postsPrefix+"p-2", Post{Text: "again", At: 2}))
	wait.For(t, 10*time.Second, func() error {
		if _, kv := snapshot(t, c, "bob"); kv[timelinePrefix+"p-2"] == "" {
			return errors.New("bob has not got p-2")
		}
		return nil
	})
	if _, kv := snapshot(t, c, "carol"); kv[timelinePrefix+"p-2"] != "" {
		t.Errorf("carol, who unfollowed, got p-2: %v", kv)
	}
}

// TestBackendRestartsLoseAndDuplicateNothing restarts the backend over and
// over while users fill carts and check out: every item added ends in
// exactly one order with its quantity, no request or cart is left, and
// the requests made while it was down are taken when it is back (the feed
// resumes from the kept cursor). A checkout takes the whole cart as it
// finds it, so which order holds which item depends on timing; that each
// is held once does not.
func TestBackendRestartsLoseAndDuplicateNothing(t *testing.T) {
	t.Parallel()
	url, c := startDalv(t)
	cursor := filepath.Join(t.TempDir(), "cursor")
	users := []string{"u0", "u1", "u2"}
	const rounds = 12
	for round := range rounds {
		stop := runBackend(t, url, cursor)
		if round%2 == 1 {
			stop() // odd rounds: the requests are made while the backend is down
		}
		for _, u := range users {
			item := fmt.Sprintf("item-%d", round)
			commit(t, c, u, listAdd(cartItemsKey, item), putJSON(t, cartQtyPrefix+item, round+1))
			commit(t, c, u, listAdd(checkoutKey, fmt.Sprintf("o-%d", round)))
		}
		if round%2 == 0 {
			stop() // even rounds: at once, often in the middle of handling the requests
		}
	}
	stop := runBackend(t, url, cursor)
	defer stop()
	for _, u := range users {
		wait.For(t, 20*time.Second, func() error {
			if _, kv := snapshot(t, c, u); pending(kv) {
				return fmt.Errorf("%s: requests left: %s", u, kv[checkoutKey])
			}
			return nil
		})
		held := make(map[string]int)
		for id, o := range orders(t, c, u) {
			if len(o.Items) == 0 {
				t.Errorf("%s: order %s is empty", u, id)
			}
			for _, it := range o.Items {
				if _, twice := held[it.Product]; twice {
					t.Errorf("%s: %s is in two orders", u, it.Product)
				}
				held[it.Product] = it.Qty
			}
		}
		for round := range rounds {
			if item := fmt.Sprintf("item-%d", round); held[item] != round+1 {
				t.Errorf("%s: %s ordered %d times over, want quantity %d in one order", u, item, held[item], round+1)
			}
		}
		if _, kv := snapshot(t, c, u); kv[cartItemsKey] != "" {
			t.Errorf("%s: cart left: %v", u, kv)
		}
	}
}

func TestSeedOnce(t *testing.T) {
	t.Parallel()
	url, c := startDalv(t)
	b := newBackend(url, testBackendKey, filepath.Join(t.TempDir(), "cursor"), nil)
	for range 2 {
		if err := b.Seed(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := c.List(t.Context(), connect.NewRequest(&dalvv1.ListRequest{Shared: catalog}))
	if err != nil {
		t.Fatal(err)
	}
	ops, _ := catalogOps()
	if resp.Msg.Version != 1 || len(resp.Msg.Items) != len(ops) {
		t.Errorf("catalog at version %d with %d keys, want version 1 with %d", resp.Msg.Version, len(resp.Msg.Items), len(ops))
	}
}
