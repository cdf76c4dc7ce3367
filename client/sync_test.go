package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/wait"
)

// recorder is a resolver that records every conflict it is shown and
// decides with decide.
type recorder struct {
	mu     sync.Mutex
	seen   []client.Conflict
	decide client.Resolver
}

func (r *recorder) resolve(c client.Conflict) client.Resolution {
	r.mu.Lock()
	r.seen = append(r.seen, c)
	r.mu.Unlock()
	return r.decide(c)
}

func (r *recorder) conflicts() []client.Conflict {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

// describe renders conflicts as "key: base local remote", sorted.
func describe(cs []client.Conflict) []string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%s: %s %s %s", c.Key, show(c.Base), show(c.Local), show(c.Remote)))
	}
	slices.Sort(out)
	return out
}

// requireSame fails unless every replica shows what the server holds and
// has nothing pending.
func requireSame(t *testing.T, srv *server, user string, rs ...*client.Replica) {
	t.Helper()
	want, _ := srv.state(t, user)
	for _, r := range rs {
		if n := r.Status().Pending; n != 0 {
			t.Errorf("%s: %d batches still pending", r.Path(), n)
		}
		if d := diffStates(localState(t, r), want); d != "" {
			t.Errorf("%s differs from the server (replica vs server): %s", r.Path(), d)
		}
	}
}

func TestTwoDevicesEditOfflineAndConverge(t *testing.T) {
	srv := startServer(t)
	const user = "alice"
	rec := &recorder{decide: func(c client.Conflict) client.Resolution {
		if c.Remote == nil {
			return client.Use(c.Local)
		}
		return client.Use(scalar(string(c.Local.GetScalar()) + "+" + string(c.Remote.GetScalar())))
	}}
	a, _ := device(t, srv, "a.db", user, client.Options{Resolver: rec.resolve})
	b, _ := device(t, srv, "b.db", user, client.Options{Resolver: rec.resolve})
	srv.commit(t, user, put("k1", "v0"), put("k2", "v0"), put("k3", "v0"), put("k4", "v0"), listAdd("tags", "t0"))
	mustSync(t, a)
	mustSync(t, b)

	// Both edit offline: k2 and k4 on both sides, the list on both.
	write := func(r *client.Replica, f func(tx *client.Tx) error) {
		t.Helper()
		if err := r.Update(f); err != nil {
			t.Fatal(err)
		}
	}
	write(a, func(tx *client.Tx) error { return tx.Put("k1", []byte("a1")) })
	write(a, func(tx *client.Tx) error {
		if err := tx.Put("k2", []byte("a2")); err != nil {
			return err
		}
		return tx.ListAdd("tags", []byte("ta"))
	})
	write(a, func(tx *client.Tx) error { return tx.Delete("k4") })
	write(b, func(tx *client.Tx) error {
		if err := tx.Put("k2", []byte("b2")); err != nil {
			return err
		}
		return tx.Put("k3", []byte("b3"))
	})
	write(b, func(tx *client.Tx) error { return tx.ListAdd("tags", []byte("tb")) })
	write(b, func(tx *client.Tx) error { return tx.Put("k4", []byte("b4")) })

	mustSync(t, a)
	if got := rec.conflicts(); len(got) != 0 {
		t.Fatalf("first device to sync met conflicts: %v", describe(got))
	}
	mustSync(t, b)
	want := []string{`k2: "v0" "b2" "a2"`, `k4: "v0" "b4" <absent>`}
	if got := describe(rec.conflicts()); !slices.Equal(got, want) {
		t.Fatalf("resolver saw %q, want exactly %q", got, want)
	}
	mustSync(t, a)
	requireSame(t, srv, user, a, b)
	for key, want := range map[string]string{"k1": `"a1"`, "k2": `"b2+a2"`, "k3": `"b3"`, "k4": `"b4"`, "tags": "[t0,ta,tb]"} {
		if got := getString(t, a, key); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}

func TestListOpsFromSeveralDevicesMerge(t *testing.T) {
	srv := startServer(t)
	const user = "bob"
	rec := &recorder{decide: client.ServerWins}
	srv.commit(t, user, listAdd("cart", "milk"), listAdd("cart", "bread"))
	var rs []*client.Replica
	for i := range 3 {
		r, _ := device(t, srv, fmt.Sprintf("d%d.db", i), user, client.Options{Resolver: rec.resolve})
		mustSync(t, r)
		rs = append(rs, r)
	}
	for i, r := range rs {
		if err := r.ListAdd("cart", fmt.Appendf(nil, "item%d", i)); err != nil {
			t.Fatal(err)
		}
		if err := r.ListAdd("cart", []byte("shared")); err != nil {
			t.Fatal(err)
		}
	}
	if err := rs[1].ListRemove("cart", []byte("bread")); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		mustSync(t, r)
	}
	for _, r := range rs {
		mustSync(t, r)
	}
	if got := rec.conflicts(); len(got) != 0 {
		t.Errorf("list ops met conflicts: %v", describe(got))
	}
	requireSame(t, srv, user, rs...)
	if got, want := getString(t, rs[0], "cart"), "[milk,item0,shared,item1,item2]"; got != want {
		t.Errorf("cart = %s, want %s", got, want)
	}
}

func TestMergeJSON(t *testing.T) {
	srv := startServer(t)
	const user = "carol"
	a, _ := device(t, srv, "a.db", user, client.Options{Resolver: client.MergeJSON})
	b, _ := device(t, srv, "b.db", user, client.Options{Resolver: client.MergeJSON})
	type profile struct {
		Name string `json:"name"`
		City string `json:"city"`
		Age  int    `json:"age"`
	}
	if err := a.PutJSON("profile", profile{Name: "Al", City: "Oslo", Age: 30}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a)
	mustSync(t, b)
	edit := func(r *client.Replica, f func(p *profile)) {
		t.Helper()
		err := r.Update(func(tx *client.Tx) error {
			var p profile
			if err := tx.GetJSON("profile", &p); err != nil {
				return err
			}
			f(&p)
			return tx.PutJSON("profile", p)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Disjoint fields merge.
	edit(a, func(p *profile) { p.Name = "Alice" })
	edit(b, func(p *profile) { p.City = "Bergen" })
	mustSync(t, a)
	mustSync(t, b)
	mustSync(t, a)
	var got profile
	for _, r := range []*client.Replica{a, b} {
		if err := r.GetJSON("profile", &got); err != nil {
			t.Fatal(err)
		}
		if want := (profile{Name: "Alice", City: "Bergen", Age: 30}); got != want {
			t.Errorf("%s: profile = %+v, want %+v", r.Path(), got, want)
		}
	}
	requireSame(t, srv, user, a, b)

	// The same field on both sides is deferred; other keys keep syncing.
	edit(a, func(p *profile) { p.Age = 31 })
	edit(b, func(p *profile) { p.Age = 32 })
	if err := b.Put("other", []byte("synced")); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a)
	mustSync(t, b)
	cs, err := b.Conflicts()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Key != "profile" {
		t.Fatalf("inbox = %v, want the profile", describe(cs))
	}
	var base, local, remote profile
	for _, x := range []struct {
		v   *dalvv1.Value
		dst *profile
	}{{cs[0].Base, &base}, {cs[0].Local, &local}, {cs[0].Remote, &remote}} {
		if err := json.Unmarshal(x.v.GetScalar(), x.dst); err != nil {
			t.Fatal(err)
		}
	}
	if base.Age != 30 || local.Age != 32 || remote.Age != 31 {
		t.Errorf("inbox ages base %d local %d remote %d, want 30 32 31", base.Age, local.Age, remote.Age)
	}
	if err := b.GetJSON("profile", &got); err != nil || got.Age != 31 {
		t.Errorf("while deferred, b shows age %d (%v), want the server's 31", got.Age, err)
	}
	if st := b.Status(); st.Conflicts != 1 || st.Pending != 0 {
		t.Errorf("status = %+v, want 1 conflict and nothing pending", st)
	}
	srvState, _ := srv.state(t, user)
	if got := show(srvState["other"]); got != `"synced"` {
		t.Errorf("server other = %s: the key beside the deferred one did not sync", got)
	}
	// The application settles it later, for the local side.
	if err := b.Settle("profile", client.Use(cs[0].Local)); err != nil {
		t.Fatal(err)
	}
	if err := b.Settle("profile", client.Use(cs[0].Local)); !errors.Is(err, client.ErrNoConflict) {
		t.Errorf("second Settle: %v, want ErrNoConflict", err)
	}
	mustSync(t, b)
	mustSync(t, a)
	if err := a.GetJSON("profile", &got); err != nil || got.Age != 32 {
		t.Errorf("after settling, a shows age %d (%v), want 32", got.Age, err)
	}
	requireSame(t, srv, user, a, b)
	if st := b.Status(); st.Conflicts != 0 {
		t.Errorf("conflicts after settling = %d", st.Conflicts)
	}
}

func TestMergeJSONUnit(t *testing.T) {
	j := func(s string) *dalvv1.Value {
		if s == "" {
			return nil
		}
		return scalar(s)
	}
	var fallbackSaw []string
	fallback := func(c client.Conflict) client.Resolution {
		fallbackSaw = append(fallbackSaw, fmt.Sprintf("%s %s %s %s", c.Field, show(c.Base), show(c.Local), show(c.Remote)))
		return client.Use(c.Local)
	}
	for _, tt := range []struct {
		name                string
		base, local, remote string
		resolver            client.Resolver
		want                string // "defer" for a deferral
	}{
		{"disjoint", `{"a":1,"b":1}`, `{"a":2,"b":1}`, `{"a":1,"b":2}`, client.MergeJSON, `{"a":2,"b":2}`},
		{"added on both sides", `{}`, `{"x":1}`, `{"y":2}`, client.MergeJSON, `{"x":1,"y":2}`},
		{"removed locally", `{"a":1,"b":1}`, `{"b":1}`, `{"a":1,"b":2}`, client.MergeJSON, `{"b":2}`},
		{"same change both sides", `{"a":1}`, `{"a":2}`, `{"a":2}`, client.MergeJSON, `{"a":2}`},
		{"same field", `{"a":1}`, `{"a":2}`, `{"a":3}`, client.MergeJSON, "defer"},
		{"nested disjoint", `{"p":{"x":1,"y":1}}`, `{"p":{"x":2,"y":1}}`, `{"p":{"x":1,"y":2}}`, client.MergeJSON, `{"p":{"x":2,"y":2}}`},
		{"absent base", ``, `{"a":1}`, `{"b":1}`, client.MergeJSON, `{"a":1,"b":1}`},
		{"not objects", `1`, `2`, `3`, client.MergeJSON, "defer"},
		{"deleted remotely", `{"a":1}`, `{"a":2}`, ``, client.MergeJSON, "defer"},
		{"fallback decides a field", `{"a":1,"b":1}`, `{"a":2,"b":2}`, `{"a":3,"b":1}`, client.MergeJSONWith(fallback), `{"a":2,"b":2}`},
		{"fallback defers", `{"a":1}`, `{"a":2}`, `{"a":3}`, client.MergeJSONWith(func(client.Conflict) client.Resolution { return client.Defer() }), "defer"},
		{"fallback removes", `{"a":1,"b":0}`, `{"a":2,"b":0}`, `{"a":3,"b":0}`, client.MergeJSONWith(func(client.Conflict) client.Resolution { return client.Use(nil) }), `{"b":0}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := tt.resolver(client.Conflict{Key: "k", Base: j(tt.base), Local: j(tt.local), Remote: j(tt.remote)})
			if tt.want == "defer" {
				if !res.Deferred() {
					t.Fatalf("resolution %s, want Defer", show(res.Value()))
				}
				return
			}
			if res.Deferred() {
				t.Fatal("deferred")
			}
			if got := string(res.Value().GetScalar()); got != tt.want {
				t.Errorf("merged %s, want %s", got, tt.want)
			}
		})
	}
	if want := []string{`a "1" "2" "3"`}; !slices.Equal(fallbackSaw, want) {
		t.Errorf("fallback saw %q, want %q", fallbackSaw, want)
	}
}

func TestWatchedRemoteChangeMeetsPendingWrite(t *testing.T) {
	srv := startServer(t)
	const user = "dave"
	rec := &recorder{decide: client.ClientWins}
	a, net := device(t, srv, "a.db", user, client.Options{Resolver: rec.resolve})
	srv.commit(t, user, put("doc", "v0"), put("other", "o0"))
	changes := make(chan client.Change, 100)
	defer a.Subscribe("", func(c client.Change) { changes <- c })()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); !st.Watching || st.Version < 1 {
			return fmt.Errorf("status %+v: not watching yet", st)
		}
		return nil
	})
	// Syncing now fails; the watch stays open.
	net.setBlockSync(true)
	if err := a.Put("doc", []byte("local")); err != nil {
		t.Fatal(err)
	}
	v := srv.commit(t, user, put("doc", "remote"), put("other", "o1"))
	wait.For(t, 20*time.Second, func() error {
		if got := a.Status().Version; got < v {
			return fmt.Errorf("replica at version %d, want %d by watch", got, v)
		}
		return nil
	})
	// The remote change to the key with a pending write did not replace
	// what the device shows; the other key's did.
	if got := getString(t, a, "doc"); got != `"local"` {
		t.Errorf("doc = %s while its write is pending, want the local value", got)
	}
	if got := getString(t, a, "other"); got != `"o1"` {
		t.Errorf("other = %s, want the watched o1", got)
	}
	if st := a.Status(); st.Pending != 1 {
		t.Fatalf("pending = %d, want 1: the write must not have synced", st.Pending)
	}
	if got := rec.conflicts(); len(got) != 0 {
		t.Fatalf("resolver called before any sync: %v", describe(got))
	}
	net.setBlockSync(false)
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); st.Pending != 0 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if got, want := describe(rec.conflicts()), []string{`doc: "v0" "local" "remote"`}; !slices.Equal(got, want) {
		t.Fatalf("resolver saw %q, want %q", got, want)
	}
	requireSame(t, srv, user, a)
	if got := getString(t, a, "doc"); got != `"local"` {
		t.Errorf("doc = %s after ClientWins, want local", got)
	}
	// Subscribers saw the local write, the watched other key, and never
	// the remote doc value.
	var seen []string
	for len(changes) > 0 {
		c := <-changes
		seen = append(seen, c.Key+"="+show(c.Value))
	}
	if slices.Contains(seen, `doc="remote"`) {
		t.Errorf("a subscriber was shown the remote doc while the write was pending: %q", seen)
	}
	if !slices.Contains(seen, `other="o1"`) || !slices.Contains(seen, `doc="local"`) {
		t.Errorf("changes seen %q, want doc=local and other=o1 among them", seen)
	}
}

func TestLoopSyncsWhenServerComesBack(t *testing.T) {
	srv := startServer(t)
	const user = "erin"
	a, _ := device(t, srv, "a.db", user, client.Options{})
	b, _ := device(t, srv, "b.db", user, client.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := a.ListAdd("cart", fmt.Appendf(nil, "item%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); st.Online || st.LastError == nil || st.Pending == 0 {
			return fmt.Errorf("status %+v, want offline with an error and pending writes", st)
		}
		return nil
	})
	srv.start()
	wait.For(t, 30*time.Second, func() error {
		if st := a.Status(); st.Pending != 0 || !st.Online || st.LastError != nil {
			return fmt.Errorf("a: %+v", st)
		}
		if got := getString(t, b, "cart"); got != "[item0,item1,item2,item3,item4]" {
			return fmt.Errorf("b shows cart %s", got)
		}
		return nil
	})
	requireSame(t, srv, user, a, b)
	// Live: a write on b reaches a by the watch, with no explicit sync.
	got := make(chan client.Change, 10)
	defer a.Subscribe("cart", func(c client.Change) { got <- c })()
	if err := b.ListRemove("cart", []byte("item0")); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-got:
		if !c.Remote || show(c.Value) != "[item1,item2,item3,item4]" {
			t.Errorf("a saw %+v", c)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a did not see b's write live")
	}
}

func TestTokenRefreshAndWrongUser(t *testing.T) {
	srv := startServer(t)
	var calls atomic.Int32
	src := func(context.Context) (string, error) {
		if calls.Add(1) == 1 {
			// Expired: the server answers unauthenticated.
			return auth.Mint([]byte(testSecret), "frank", time.Minute, time.Now().Add(-time.Hour))
		}
		return auth.Mint([]byte(testSecret), "frank", time.Hour, time.Now())
	}
	a, _ := device(t, srv, "a.db", "frank", client.Options{TokenSource: src})
	if err := a.Put("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a)
	if got := calls.Load(); got != 2 {
		t.Errorf("token source called %d times, want 2 (again after unauthenticated)", got)
	}
	if got := a.User(); got != "frank" {
		t.Errorf("User() = %q", got)
	}
	// The same file with a token for someone else.
	path := a.Path()
	closeChecked(t, a)
	n := newNet(srv)
	r, err := client.Open(path, client.Options{ServerURL: "http://dalv.test", HTTPClient: n.client(), TokenSource: tokens("mallory")})
	if err != nil {
		t.Fatal(err)
	}
	defer closeChecked(t, r)
	if err := r.Put("k", []byte("stolen")); err != nil {
		t.Fatal(err)
	}
	err = r.Sync(context.Background())
	if !errors.Is(err, client.ErrWrongUser) || !strings.Contains(err.Error(), `"mallory"`) || !strings.Contains(err.Error(), `"frank"`) {
		t.Fatalf("sync with another user's token: %v, want ErrWrongUser naming both users", err)
	}
	if st, _ := srv.state(t, "mallory"); len(st) != 0 {
		t.Errorf("mallory's partition got %v", st)
	}
	if st := r.Status(); !errors.Is(st.LastError, client.ErrWrongUser) {
		t.Errorf("status error = %v", st.LastError)
	}
}

func TestRefusedBatchIsSetAside(t *testing.T) {
	// The server's domains are not the default: until the device first
	// talks to it, it lets a write to priv/ through, which the server
	// then refuses.
	srv := startServer(t, "--system-prefix", "priv/", "--max-value-bytes", "100")
	const user = "gina"
	var refusedCB []client.RefusedBatch
	var mu sync.Mutex
	a, _ := device(t, srv, "a.db", user, client.Options{OnRefused: func(b client.RefusedBatch) {
		mu.Lock()
		refusedCB = append(refusedCB, b)
		mu.Unlock()
	}})
	if err := a.Put("before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := a.Put("priv/secret", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := a.Put("big", make([]byte, 200)); err != nil {
		t.Fatal(err)
	}
	if err := a.Put("after", []byte("2")); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a)
	refused, err := a.Refused()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range refused {
		got = append(got, b.Ops[0].GetKey()+":"+b.Code)
	}
	if want := []string{"priv/secret:permission_denied", "big:resource_exhausted"}; !slices.Equal(got, want) {
		t.Fatalf("refused %q, want %q", got, want)
	}
	if !strings.Contains(refused[0].Message, "priv/secret") {
		t.Errorf("refusal message %q does not name the key", refused[0].Message)
	}
	mu.Lock()
	if len(refusedCB) != 2 {
		t.Errorf("OnRefused called %d times, want 2", len(refusedCB))
	}
	mu.Unlock()
	st, _ := srv.state(t, user)
	if show(st["before"]) != `"1"` || show(st["after"]) != `"2"` || st["priv/secret"] != nil || st["big"] != nil {
		t.Errorf("server holds %v; want before and after only", st)
	}
	requireSame(t, srv, user, a)
	if s := a.Status(); s.Refused != 2 || s.LastError != nil {
		t.Errorf("status %+v", s)
	}
	// Now the device knows the server's rules and refuses such writes.
	if err := a.Put("priv/again", []byte("x")); !errors.Is(err, client.ErrSystemKey) {
		t.Errorf("write under the server's system prefix: %v, want ErrSystemKey", err)
	}
	if err := a.Put("big", make([]byte, 101)); !errors.Is(err, client.ErrLimit) {
		t.Errorf("write over the server's value limit: %v, want ErrLimit", err)
	}
	if err := a.DropRefused(refused[0].ID); err != nil {
		t.Fatal(err)
	}
	if s := a.Status(); s.Refused != 1 {
		t.Errorf("refused after drop = %d", s.Refused)
	}
}

func TestLostAnswersApplyOnce(t *testing.T) {
	srv := startServer(t)
	const user = "henry"
	rec := &recorder{decide: client.ServerWins}
	a, net := device(t, srv, "a.db", user, client.Options{Resolver: rec.resolve})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); !st.Watching {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	// The batch reaches the server, its answer never comes back; the
	// watch brings the device its own commit meanwhile.
	net.setLoseSync(true)
	if err := a.Put("k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); st.Version != 1 || st.Pending != 1 {
			return fmt.Errorf("status %+v, want version 1 by watch and the batch still pending", st)
		}
		return nil
	})
	if err := a.Put("k", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if got := getString(t, a, "k"); got != `"2"` {
		t.Errorf("k = %s, want the latest local write", got)
	}
	net.setLoseSync(false)
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); st.Pending != 0 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if got := rec.conflicts(); len(got) != 0 {
		t.Errorf("the device's own commit was taken for a conflict: %v", describe(got))
	}
	st, version := srv.state(t, user)
	if version != 2 || show(st["k"]) != `"2"` {
		t.Errorf("server at version %d with k=%s; want 2 commits, k=2 (each batch applied once)", version, show(st["k"]))
	}
	requireSame(t, srv, user, a)
}

// TestSeenChangeIsNotAConflict: after a real conflict on c is resolved,
// the rewritten batch goes up merged with the later ones: a list op on l,
// which has an unseen remote list change (that merges), and a write to k,
// whose remote change the device had seen before writing. The base version
// sent must be low enough for l, which makes the server flag k too; the
// resolver must see c only.
func TestSeenChangeIsNotAConflict(t *testing.T) {
	srv := startServer(t)
	const user = "ivy"
	rec := &recorder{decide: client.ClientWins}
	a, net := device(t, srv, "a.db", user, client.Options{Resolver: rec.resolve})
	srv.commit(t, user, listAdd("l", "start"), put("k", "k0"), put("c", "c0"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitVersion := func(v uint64) {
		t.Helper()
		wait.For(t, 20*time.Second, func() error {
			if got := a.Status().Version; got < v {
				return fmt.Errorf("at version %d, want %d", got, v)
			}
			return nil
		})
	}
	waitVersion(1)
	net.setBlockSync(true)
	if err := a.Put("c", []byte("mine")); err != nil {
		t.Fatal(err)
	}
	if err := a.ListAdd("l", []byte("mine")); err != nil {
		t.Fatal(err)
	}
	srv.commit(t, user, put("c", "theirs"))                  // unseen: c is pending
	waitVersion(srv.commit(t, user, listAdd("l", "theirs"))) // unseen: l is pending
	waitVersion(srv.commit(t, user, put("k", "k1")))         // seen: k is not pending
	if got := getString(t, a, "k"); got != `"k1"` {
		t.Fatalf("k = %s, want the watched k1", got)
	}
	if err := a.Put("k", []byte("k2")); err != nil {
		t.Fatal(err)
	}
	net.setBlockSync(false)
	wait.For(t, 20*time.Second, func() error {
		if st := a.Status(); st.Pending != 0 || st.LastError != nil {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if got, want := describe(rec.conflicts()), []string{`c: "c0" "mine" "theirs"`}; !slices.Equal(got, want) {
		t.Errorf("resolver saw %q, want %q", got, want)
	}
	requireSame(t, srv, user, a)
	for key, want := range map[string]string{"l": "[start,theirs,mine]", "k": `"k2"`, "c": `"mine"`} {
		if got := getString(t, a, key); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}

func TestRulesRefreshedWhenServerComesBack(t *testing.T) {
	srv := startServer(t)
	a, _ := device(t, srv, "a.db", "lee", client.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		if !a.Status().Watching {
			return errors.New("not watching")
		}
		return nil
	})
	if err := a.Put("priv/x", []byte("1")); err != nil {
		t.Fatalf("priv/ is user-domain by default: %v", err)
	}
	srv.stop()
	srv.args = append(srv.args, "--system-prefix", "priv/")
	srv.start()
	wait.For(t, 20*time.Second, func() error {
		if err := a.Put("priv/y", []byte("2")); !errors.Is(err, client.ErrSystemKey) {
			return fmt.Errorf("write under the new system prefix: %v", err)
		}
		return nil
	})
}
