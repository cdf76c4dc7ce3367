package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
)

// This file holds the tests of shared partitions (the README's
// "Partitions"): named
// partitions backends write and devices read (all of them, or those whose
// token carries a claim), never write; separate from any user's partition.

// sharedFlags configure an open partition "catalog" and a claim-gated "beta".
var sharedFlags = []string{"--shared", "catalog", "--shared", "beta=tier:beta"}

// sharedToken mints a device token for user with extra claims.
func sharedToken(t testing.TB, user string, claims map[string]any) string {
	t.Helper()
	c := map[string]any{"sub": user, "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	return "Bearer " + sign(t, hs256, c)
}

// sharedCommit commits ops to the shared partition name.
func sharedCommit(t testing.TB, b dalvv1connect.BackendServiceClient, name string, o ...*dalvv1.Op) uint64 {
	t.Helper()
	resp, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{Shared: name, Ops: o}))
	if err != nil {
		t.Fatalf("Commit(shared %s): %v", name, err)
	}
	return resp.Msg.GetVersion()
}

// sharedRead reads all of the shared partition name through List.
func sharedRead(t testing.TB, b dalvv1connect.BackendServiceClient, name string) partition {
	t.Helper()
	resp, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{Shared: name, PageSize: 1000}))
	if err != nil {
		t.Fatalf("List(shared %s): %v", name, err)
	}
	if resp.Msg.GetNextPageToken() != "" {
		t.Fatalf("List(shared %s) has more than one page", name)
	}
	return partition{version: resp.Msg.GetVersion(), items: render(resp.Msg.GetItems())}
}

// sharedPull pulls a shared partition as a device with authorization.
func sharedPull(t testing.TB, srv *proc.Server, authorization, shared string) (*dalvv1.SyncResponse, error) {
	t.Helper()
	return trySync(t, clientWith(srv, authorization), &dalvv1.SyncRequest{DeviceId: "d", Shared: shared})
}

// TestSharedPartitions checks that a backend writes shared partitions,
// that devices read them by Sync and Watch as their claims allow, never
// write them, and learn which they may read from GetConfig.
func TestSharedPartitions(t *testing.T) {
	t.Parallel()
	srv := startServer(t, sharedFlags...)
	b := backendClient(t, srv)
	var (
		plain     = "Bearer " + token(t, "alice")
		beta      = sharedToken(t, "bob", map[string]any{"tier": "beta"})
		betaArray = sharedToken(t, "carol", map[string]any{"tier": []string{"gold", "beta"}})
		gamma     = sharedToken(t, "dave", map[string]any{"tier": "gamma"})
		gammas    = sharedToken(t, "erin", map[string]any{"tier": []string{"gamma", "betas"}})
	)
	feed := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{})
	feedStart(t, feed)

	c1 := sharedCommit(t, b, "catalog", opPut("cat/shoes", "1"), opPut("cat/hats", "2"))
	b1 := sharedCommit(t, b, "beta", opPut("flags/new-ui", "on"))
	if c1 != 1 || b1 != 1 {
		t.Fatalf("first commits to catalog and beta got versions %d and %d, want 1 and 1: each partition counts its own", c1, b1)
	}

	// Every device reads catalog.
	for _, who := range []string{plain, beta, gamma} {
		resp, err := sharedPull(t, srv, who, "catalog")
		if err != nil {
			t.Fatalf("pull catalog: %v", err)
		}
		if got, want := render(resp.GetChanges()), []string{"cat/hats=2@1", "cat/shoes=1@1"}; resp.GetVersion() != c1 || !slices.Equal(sorted(got), want) {
			t.Fatalf("pull catalog = version %d %v, want version %d %v", resp.GetVersion(), got, c1, want)
		}
	}
	w := watchDeviceWith(t, http.DefaultClient, srv, plain, &dalvv1.WatchRequest{DeviceId: "d", Shared: "catalog"})
	evs, at := watchCatchUp(t, w)
	if len(evs) != 1 || at != c1 || !slices.Equal(sorted(render(evs[0].GetChanges())), []string{"cat/hats=2@1", "cat/shoes=1@1"}) {
		t.Fatalf("watch of catalog caught up with %v at %d", evs, at)
	}
	c2 := sharedCommit(t, b, "catalog", opPut("cat/socks", "3"), opDelete("cat/hats"))
	ev := watchNext(t, w)
	if got, want := sorted(render(ev.GetChanges())), []string{fmt.Sprintf("cat/hats=deleted@%d", c2), fmt.Sprintf("cat/socks=3@%d", c2)}; ev.GetVersion() != c2 || !slices.Equal(got, want) {
		t.Fatalf("live event of catalog: version %d %v, want version %d %v", ev.GetVersion(), got, c2, want)
	}

	// Only tokens whose tier claim holds beta read beta.
	for _, tc := range []struct {
		name, authorization string
		ok                  bool
	}{
		{"string claim", beta, true},
		{"array claim", betaArray, true},
		{"no claim", plain, false},
		{"other value", gamma, false},
		{"array without it", gammas, false},
	} {
		t.Run("beta/"+tc.name, func(t *testing.T) {
			resp, err := sharedPull(t, srv, tc.authorization, "beta")
			w := watchDeviceWith(t, http.DefaultClient, srv, tc.authorization, &dalvv1.WatchRequest{DeviceId: "d", Shared: "beta"})
			if !tc.ok {
				wantError(t, err, connect.CodePermissionDenied, "beta", "tier")
				wantError(t, w.end(t, streamWait), connect.CodePermissionDenied, "beta", "tier")
				return
			}
			if err != nil {
				t.Fatalf("pull beta: %v", err)
			}
			if got, want := render(resp.GetChanges()), []string{"flags/new-ui=on@1"}; !slices.Equal(got, want) {
				t.Fatalf("pull beta = %v, want %v", got, want)
			}
			if evs, at := watchCatchUp(t, w); len(evs) != 1 || at != b1 {
				t.Fatalf("watch of beta caught up with %v at %d", evs, at)
			}
		})
	}

	// No device writes a shared partition, whatever its claims.
	for _, tc := range []struct{ authorization, shared string }{{plain, "catalog"}, {beta, "catalog"}, {beta, "beta"}} {
		before := sharedRead(t, b, tc.shared)
		_, err := trySync(t, clientWith(srv, tc.authorization), &dalvv1.SyncRequest{DeviceId: "d", Shared: tc.shared, Batch: 1, Ops: ops(opPut("cat/shoes", "free"))})
		wantError(t, err, connect.CodePermissionDenied, tc.shared, "read-only")
		if after := sharedRead(t, b, tc.shared); !after.equal(before) {
			t.Fatalf("after a refused device write, shared %s = %v, want %v", tc.shared, after, before)
		}
	}

	// An unknown name is not found, for devices and backends.
	_, err := sharedPull(t, srv, plain, "nope")
	wantError(t, err, connect.CodeNotFound, "nope")
	wantError(t, watchDeviceWith(t, http.DefaultClient, srv, plain, &dalvv1.WatchRequest{DeviceId: "d", Shared: "nope"}).end(t, streamWait), connect.CodeNotFound, "nope")
	_, err = b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{Shared: "nope", Ops: ops(opPut("k", "v"))}))
	wantError(t, err, connect.CodeNotFound, "nope", "--shared")
	_, err = b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{Shared: "nope", Keys: []string{"k"}}))
	wantError(t, err, connect.CodeNotFound, "nope")
	_, err = b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "alice", Shared: "catalog", Keys: []string{"k"}}))
	wantError(t, err, connect.CodeInvalidArgument, "not both")

	// GetConfig lists exactly what the caller may read.
	for _, tc := range []struct {
		authorization string
		want          []string
	}{{plain, []string{"catalog"}}, {beta, []string{"beta", "catalog"}}, {betaArray, []string{"beta", "catalog"}}, {gamma, []string{"catalog"}}} {
		resp, err := clientWith(srv, tc.authorization).GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Msg.GetSharedPartitions(); !slices.Equal(got, tc.want) {
			t.Errorf("GetConfig for %s lists shared partitions %v, want %v", resp.Msg.GetUser(), got, tc.want)
		}
	}

	// Backend reads, the feed, and an erase.
	resp, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{Shared: "catalog", Keys: []string{"cat/shoes", "cat/hats", "cat/socks"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := render(resp.Msg.GetItems()), []string{"cat/shoes=1@1", fmt.Sprintf("cat/socks=3@%d", c2)}; resp.Msg.GetVersion() != c2 || !slices.Equal(got, want) {
		t.Fatalf("Get(shared catalog) = version %d %v, want version %d %v", resp.Msg.GetVersion(), got, c2, want)
	}
	if got, want := sharedRead(t, b, "catalog"), (partition{c2, []string{"cat/shoes=1@1", fmt.Sprintf("cat/socks=3@%d", c2)}}); !got.equal(want) {
		t.Fatalf("List(shared catalog) = %v, want %v", got, want)
	}
	del, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{Shared: "catalog"}))
	if err != nil {
		t.Fatal(err)
	}
	erased := del.Msg.GetVersion()
	if ev := watchNext(t, w); !ev.GetReset_() || ev.GetVersion() != erased || len(ev.GetChanges()) != 0 {
		t.Fatalf("watch of catalog after its erase: %v, want a reset to nothing at %d", ev, erased)
	}
	if got, want := sharedRead(t, b, "catalog"), (partition{version: erased}); !got.equal(want) {
		t.Fatalf("shared catalog after its erase = %v, want %v", got, want)
	}
	if got, want := sharedRead(t, b, "beta"), (partition{b1, []string{"flags/new-ui=on@1"}}); !got.equal(want) {
		t.Fatalf("erasing catalog changed beta: %v, want %v", got, want)
	}
	for _, want := range []string{
		fmt.Sprintf("shared:catalog@%d: PUT cat/shoes=1, PUT cat/hats=2", c1),
		fmt.Sprintf("shared:beta@%d: PUT flags/new-ui=on", b1),
		fmt.Sprintf("shared:catalog@%d: PUT cat/socks=3, DELETE cat/hats", c2),
		fmt.Sprintf("shared:catalog@%d: ERASED", erased),
	} {
		ev := feedNext(t, feed)
		if got := feedRender(ev); got != want || ev.GetUser() != "" {
			t.Fatalf("feed delivered %q (user %q), want %q with no user", got, ev.GetUser(), want)
		}
	}
}

// TestSharedNameIsNotAUser checks that the user whose id is "catalog" has
// a partition of its own, separate from shared "catalog" in every read,
// write, watch, erase and feed event.
func TestSharedNameIsNotAUser(t *testing.T) {
	t.Parallel()
	srv := startServer(t, sharedFlags...)
	b := backendClient(t, srv)
	feed := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{})
	feedStart(t, feed)
	dev := deviceClient(t, srv, "catalog")
	own := watchDevice(t, srv, "catalog", &dalvv1.WatchRequest{DeviceId: "d"})
	watchCatchUp(t, own)
	shared := watchDevice(t, srv, "catalog", &dalvv1.WatchRequest{DeviceId: "d", Shared: "catalog"})
	watchCatchUp(t, shared)

	u1 := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("mine", "u"), opPut("both", "user"))}).GetVersion()
	s1 := sharedCommit(t, b, "catalog", opPut("theirs", "s"), opPut("both", "shared"))
	u2 := commit(t, b, "catalog", opPut("backend-to-user", "u2"))
	if u1 != 1 || s1 != 1 || u2 != 2 {
		t.Fatalf("versions user %d, shared %d, user %d; want 1, 1, 2", u1, s1, u2)
	}

	wantPartition(t, b, "catalog", partition{u2, []string{"backend-to-user=u2@2", "both=user@1", "mine=u@1"}})
	if got, want := sharedRead(t, b, "catalog"), (partition{s1, []string{"both=shared@1", "theirs=s@1"}}); !got.equal(want) {
		t.Fatalf("shared catalog = %v, want %v", got, want)
	}
	resp := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "d2"})
	if got, want := sorted(render(resp.GetChanges())), []string{"backend-to-user=u2@2", "both=user@1", "mine=u@1"}; !slices.Equal(got, want) {
		t.Fatalf("user catalog's own pull = %v, want %v", got, want)
	}
	resp = mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "d2", Shared: "catalog"})
	if got, want := sorted(render(resp.GetChanges())), []string{"both=shared@1", "theirs=s@1"}; !slices.Equal(got, want) {
		t.Fatalf("user catalog's pull of shared catalog = %v, want %v", got, want)
	}
	for _, step := range []struct {
		w    *streamPump[dalvv1.WatchEvent]
		name string
		want [][]string
	}{
		{own, "own", [][]string{{"both=user@1", "mine=u@1"}, {"backend-to-user=u2@2"}}},
		{shared, "shared", [][]string{{"both=shared@1", "theirs=s@1"}}},
	} {
		for _, want := range step.want {
			if got := sorted(render(watchNext(t, step.w).GetChanges())); !slices.Equal(got, want) {
				t.Fatalf("%s watch: %v, want %v", step.name, got, want)
			}
		}
	}

	// Erasing the user leaves the shared partition alone, and back.
	if _, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "catalog"})); err != nil {
		t.Fatal(err)
	}
	if got, want := sharedRead(t, b, "catalog"), (partition{s1, []string{"both=shared@1", "theirs=s@1"}}); !got.equal(want) {
		t.Fatalf("erasing user catalog changed shared catalog: %v, want %v", got, want)
	}
	if ev := watchNext(t, own); !ev.GetReset_() {
		t.Fatalf("own watch after the user's erase: %v, want a reset", ev)
	}
	s2 := sharedCommit(t, b, "catalog", opPut("later", "s2"))
	if ev := watchNext(t, shared); ev.GetReset_() || ev.GetVersion() != s2 {
		t.Fatalf("shared watch after the user's erase: %v, want the next shared commit %d and no reset", ev, s2)
	}
	if got, want := readPartition(t, b, "catalog"), (partition{version: u2 + 1}); !got.equal(want) {
		t.Fatalf("user catalog after its erase = %v, want %v", got, want)
	}

	for _, want := range []string{
		"user:catalog@1: PUT mine=u, PUT both=user",
		"shared:catalog@1: PUT theirs=s, PUT both=shared",
		"user:catalog@2: PUT backend-to-user=u2",
		"user:catalog@3: ERASED",
		fmt.Sprintf("shared:catalog@%d: PUT later=s2", s2),
	} {
		ev := feedNext(t, feed)
		if got := feedRender(ev); got != want || (ev.GetUser() != "") == (ev.GetShared() != "") {
			t.Fatalf("feed delivered %q (user %q, shared %q), want %q with exactly one set", got, ev.GetUser(), ev.GetShared(), want)
		}
	}
}
