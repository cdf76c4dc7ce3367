package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file holds the tests of Sync (the README's "How it behaves"), and the helpers the
// other test files of the package share.

const (
	accepted = dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED
	conflict = dalvv1.SyncStatus_SYNC_STATUS_CONFLICT
)

// ctx is a context for one request of t, bounded so that a hung server
// fails the test instead of the whole run.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func scalar(s string) *dalvv1.Value {
	return &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: []byte(s)}}
}

func list(items ...string) *dalvv1.Value {
	l := &dalvv1.ListValue{}
	for _, it := range items {
		l.Items = append(l.Items, []byte(it))
	}
	return &dalvv1.Value{Kind: &dalvv1.Value_List{List: l}}
}

func opPut(key, val string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: scalar(val)}
}

func opPutList(key string, items ...string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: list(items...)}
}

func opDelete(key string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: key}
}

func opAdd(key, elem string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: key, Value: scalar(elem)}
}

func opRemove(key, elem string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: key, Value: scalar(elem)}
}

func ops(o ...*dalvv1.Op) []*dalvv1.Op { return o }

// show renders a value as text: the scalar's bytes, or [a b] for a list.
func show(v *dalvv1.Value) string {
	switch k := v.GetKind().(type) {
	case *dalvv1.Value_Scalar:
		return string(k.Scalar)
	case *dalvv1.Value_List:
		items := make([]string, len(k.List.GetItems()))
		for i, it := range k.List.GetItems() {
			items[i] = string(it)
		}
		return "[" + strings.Join(items, " ") + "]"
	}
	return "<unset>"
}

// render renders changes as "key=value@version", or "key=deleted@version"
// for a tombstone, so they compare as strings and read well in a failure.
func render(cs []*dalvv1.Change) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		v := show(c.GetValue())
		if c.GetDeleted() {
			v = "deleted"
			if c.GetValue() != nil {
				v = "deleted+" + show(c.GetValue()) // a tombstone must carry no value
			}
		}
		out[i] = fmt.Sprintf("%s=%s@%d", c.GetKey(), v, c.GetVersion())
	}
	return out
}

// trySync sends one Sync.
func trySync(t testing.TB, c dalvv1connect.ClientServiceClient, req *dalvv1.SyncRequest) (*dalvv1.SyncResponse, error) {
	t.Helper()
	resp, err := c.Sync(ctx(t), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// mustSync sends one Sync and fails the test on an error.
func mustSync(t testing.TB, c dalvv1connect.ClientServiceClient, req *dalvv1.SyncRequest) *dalvv1.SyncResponse {
	t.Helper()
	resp, err := trySync(t, c, req)
	if err != nil {
		t.Fatalf("Sync(device %q, base %d, batch %d, %d ops): %v", req.GetDeviceId(), req.GetBaseVersion(), req.GetBatch(), len(req.GetOps()), err)
	}
	return resp
}

// commit makes one backend commit to user's partition and returns its version.
func commit(t testing.TB, b dalvv1connect.BackendServiceClient, user string, o ...*dalvv1.Op) uint64 {
	t.Helper()
	resp, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: o}))
	if err != nil {
		t.Fatalf("Commit(%s, %d ops): %v", user, len(o), err)
	}
	return resp.Msg.GetVersion()
}

// partition is a partition's state as the backend API reads it.
type partition struct {
	version uint64
	items   []string // rendered, in key order
}

func (p partition) String() string {
	return fmt.Sprintf("version %d %v", p.version, p.items)
}

func (p partition) equal(q partition) bool {
	return p.version == q.version && slices.Equal(p.items, q.items)
}

// readPartition reads all of user's partition through BackendService.List.
func readPartition(t testing.TB, b dalvv1connect.BackendServiceClient, user string) partition {
	t.Helper()
	var (
		p     partition
		token string
	)
	for page := 0; ; page++ {
		resp, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: user, PageSize: 1000, PageToken: token}))
		if err != nil {
			t.Fatalf("List(%s): %v", user, err)
		}
		if page > 0 && resp.Msg.GetVersion() != p.version {
			t.Fatalf("List(%s) moved from version %d to %d while paging; the test expects no writer", user, p.version, resp.Msg.GetVersion())
		}
		p.version = resp.Msg.GetVersion()
		p.items = append(p.items, render(resp.Msg.GetItems())...)
		if token = resp.Msg.GetNextPageToken(); token == "" {
			return p
		}
	}
}

// wantPartition checks user's partition is want.
func wantPartition(t testing.TB, b dalvv1connect.BackendServiceClient, user string, want partition) {
	t.Helper()
	if got := readPartition(t, b, user); !got.equal(want) {
		t.Fatalf("partition %s = %v, want %v", user, got, want)
	}
}

// wantError checks that err has code and that its message contains each of
// words, so it says in words what was wrong.
func wantError(t testing.TB, err error, code connect.Code, words ...string) {
	t.Helper()
	if got, want := codeOf(err), code.String(); got != want {
		t.Fatalf("code = %s (%v), want %s", got, err, want)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a *connect.Error", err)
	}
	for _, w := range words {
		if !strings.Contains(ce.Message(), w) {
			t.Errorf("message %q does not contain %q", ce.Message(), w)
		}
	}
}

// refused runs do, which must fail with code and a message containing
// words, and checks that user's partition is exactly as before.
func refused(t testing.TB, b dalvv1connect.BackendServiceClient, user string, do func() error, code connect.Code, words ...string) {
	t.Helper()
	before := readPartition(t, b, user)
	wantError(t, do(), code, words...)
	if after := readPartition(t, b, user); !after.equal(before) {
		t.Fatalf("after a refused request, partition %s = %v, want it unchanged: %v", user, after, before)
	}
}

// pullAll pulls from base until more is false, echoing the horizon while a
// reset continues, and returns every answer. More than 100 answers fail the
// test, so a restart loop shows.
func pullAll(t testing.TB, c dalvv1connect.ClientServiceClient, dev string, base uint64) []*dalvv1.SyncResponse {
	t.Helper()
	var (
		pages        []*dalvv1.SyncResponse
		resetHorizon uint64
	)
	for len(pages) < 100 {
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: dev, BaseVersion: base, ResetHorizon: resetHorizon})
		if resp.GetStatus() != accepted {
			t.Fatalf("pull from %d: status %v, want %v", base, resp.GetStatus(), accepted)
		}
		pages = append(pages, resp)
		if !resp.GetMore() {
			return pages
		}
		if resp.GetVersion() <= base && !resp.GetReset_() {
			t.Fatalf("pull from %d: more is set but version %d does not advance", base, resp.GetVersion())
		}
		resetHorizon = 0
		if resp.GetReset_() {
			resetHorizon = resp.GetHorizon()
		}
		base = resp.GetVersion()
	}
	t.Fatalf("pull did not end after %d answers (restart loop?)", len(pages))
	return nil
}

// replica is what a device holds after applying answers.
type replica struct {
	version uint64
	values  map[string]string // key -> show(value)
	seen    map[string]int    // key -> times it came in a change
}

// apply applies the answers of one pullAll (or one sync) to r as a device
// would: a reset that starts replaces everything.
func (r *replica) apply(pages []*dalvv1.SyncResponse) {
	inReset := false
	for _, p := range pages {
		if p.GetReset_() && !inReset {
			r.values = map[string]string{}
			r.seen = map[string]int{}
		}
		inReset = p.GetReset_() && p.GetMore()
		if r.values == nil {
			r.values, r.seen = map[string]string{}, map[string]int{}
		}
		for _, c := range p.GetChanges() {
			r.seen[c.GetKey()]++
			if c.GetDeleted() {
				delete(r.values, c.GetKey())
			} else {
				r.values[c.GetKey()] = show(c.GetValue())
			}
		}
		r.version = p.GetVersion()
	}
}

// items renders r like partition.items, without versions.
// check fails t unless r ends at version with every key of want, each
// received exactly once, and nothing else.
func (r *replica) check(t *testing.T, version uint64, want map[string]string) {
	t.Helper()
	if r.version != version {
		t.Fatalf("final version = %d, want %d", r.version, version)
	}
	for k, n := range r.seen {
		if n != 1 {
			t.Errorf("key %s came %d times, want once", k, n)
		}
	}
	if got := len(r.values); got != len(want) {
		t.Fatalf("replica holds %d keys, want %d", got, len(want))
	}
	for k, v := range want {
		if r.values[k] != v {
			t.Fatalf("key %s = %.20q..., want %.20q...", k, r.values[k], v)
		}
	}
}

func (r *replica) items() []string {
	var out []string
	for k, v := range r.values {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// withoutVersions drops the "@version" of rendered items.
func withoutVersions(items []string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it[:strings.LastIndexByte(it, '@')]
	}
	return out
}

// TestSyncIdempotentRetry checks Sync's first rule: a batch sent again (its
// answer was lost) is answered as a success and never applied twice.
func TestSyncIdempotentRetry(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	c := deviceClient(t, srv, "alice")

	first := &dalvv1.SyncRequest{DeviceId: "phone", Batch: 1, Ops: ops(opPut("name", "Alice"), opAdd("tags", "x"))}
	resp1 := mustSync(t, c, first)
	resp2 := mustSync(t, c, first) // the first answer was lost
	if got, want := resp1.GetStatus(), accepted; got != want {
		t.Fatalf("first send: status %v, want %v", got, want)
	}
	if !proto.Equal(resp2, resp1) {
		t.Fatalf("resent batch answered %v, want the first answer %v", resp2, resp1)
	}
	wantPartition(t, b, "alice", partition{1, []string{"name=Alice@1", "tags=[x]@1"}})

	// Batch 2 adds y; its answer is lost, and meanwhile the backend removes
	// y. Applying the retry again would bring y back.
	second := &dalvv1.SyncRequest{DeviceId: "phone", BaseVersion: 1, Batch: 2, Ops: ops(opAdd("tags", "y"))}
	if got, want := render(mustSync(t, c, second).GetChanges()), []string{"tags=[x y]@2"}; !slices.Equal(got, want) {
		t.Fatalf("batch 2 changes = %v, want %v", got, want)
	}
	if got, want := commit(t, b, "alice", opRemove("tags", "y")), uint64(3); got != want {
		t.Fatalf("backend commit version = %d, want %d", got, want)
	}
	resp := mustSync(t, c, second)
	if got, want := resp.GetStatus(), accepted; got != want {
		t.Fatalf("resent batch 2: status %v, want %v", got, want)
	}
	if got, want := resp.GetVersion(), uint64(3); got != want {
		t.Fatalf("resent batch 2: version %d, want %d", got, want)
	}
	if got, want := render(resp.GetChanges()), []string{"tags=[x]@3"}; !slices.Equal(got, want) {
		t.Fatalf("resent batch 2: changes = %v, want %v", got, want)
	}
	wantPartition(t, b, "alice", partition{3, []string{"name=Alice@1", "tags=[x]@3"}})

	// An older batch number is applied already too, whatever it carries now.
	resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "phone", BaseVersion: 3, Batch: 1, Ops: ops(opPut("name", "Mallory"))})
	if got, want := resp.GetStatus(), accepted; got != want {
		t.Fatalf("replayed batch 1: status %v, want %v", got, want)
	}
	wantPartition(t, b, "alice", partition{3, []string{"name=Alice@1", "tags=[x]@3"}})

	// Batch numbers belong to a device: the tablet's batch 1 is new.
	resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "tablet", BaseVersion: 3, Batch: 1, Ops: ops(opPut("name", "Alicia"))})
	if got, want := resp.GetVersion(), uint64(4); got != want {
		t.Fatalf("tablet batch 1: version %d, want %d", got, want)
	}
	wantPartition(t, b, "alice", partition{4, []string{"name=Alicia@4", "tags=[x]@3"}})
}

// TestSyncSystemKeys checks Sync's second rule: devices may not write
// system-domain keys, by the default prefix or a configured one, and a
// refused sync applies none of its ops; backends write them and devices read
// them.
func TestSyncSystemKeys(t *testing.T) {
	t.Parallel()
	t.Run("default prefix", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t)
		b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("prefs/theme", "dark"))})
		for i, bad := range []*dalvv1.Op{opPut("sys/plan", "pro"), opDelete("sys/plan"), opAdd("sys/followers", "me"), opRemove("sys/followers", "x")} {
			refused(t, b, "alice", func() error {
				_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: uint64(2 + i), Ops: ops(opPut("prefs/theme", "light"), bad)})
				return err
			}, connect.CodePermissionDenied, `"sys/`, "system-domain")
		}
		// admin/ is a user key here.
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 9, Ops: ops(opPut("admin/x", "1"))})
		if got, want := resp.GetStatus(), accepted; got != want {
			t.Fatalf("PUT admin/x: status %v, want %v", got, want)
		}
		wantPartition(t, b, "alice", partition{2, []string{"admin/x=1@2", "prefs/theme=dark@1"}})
	})
	t.Run("configured prefix", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, "--system-prefix", "admin/")
		b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("sys/x", "mine"))})
		if got, want := resp.GetStatus(), accepted; got != want {
			t.Fatalf("PUT sys/x with --system-prefix admin/: status %v, want %v", got, want)
		}
		refused(t, b, "alice", func() error {
			_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 2, Ops: ops(opPut("sys/x", "again"), opPut("admin/x", "1"))})
			return err
		}, connect.CodePermissionDenied, `"admin/x"`, "system-domain")
		wantPartition(t, b, "alice", partition{1, []string{"sys/x=mine@1"}})
	})
	t.Run("backend writes, devices read", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t)
		b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
		commit(t, b, "alice", opPut("sys/plan", "pro"), opAdd("sys/followers", "bob"))
		commit(t, b, "alice", opAdd("sys/followers", "carol"))
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d"})
		if got, want := render(resp.GetChanges()), []string{"sys/plan=pro@1", "sys/followers=[bob carol]@2"}; !slices.Equal(got, want) {
			t.Fatalf("device pull: changes = %v, want %v", got, want)
		}
		refused(t, b, "alice", func() error {
			_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 2, Batch: 1, Ops: ops(opPut("sys/plan", "free"))})
			return err
		}, connect.CodePermissionDenied, `"sys/plan"`)
	})
	t.Run("shared partition is read-only", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, "--shared", "catalog", "--shared", "beta=tier:beta")
		b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
		resp, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{Shared: "catalog", Ops: ops(opPut("shoes", "42"))}))
		if err != nil {
			t.Fatalf("backend Commit to shared catalog: %v", err)
		}
		_, err = trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Shared: "catalog", BaseVersion: resp.Msg.GetVersion(), Batch: 1, Ops: ops(opPut("shoes", "0"))})
		wantError(t, err, connect.CodePermissionDenied, "catalog", "read-only")
		pulled := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Shared: "catalog"})
		if got, want := render(pulled.GetChanges()), []string{"shoes=42@1"}; !slices.Equal(got, want) || pulled.GetVersion() != 1 {
			t.Fatalf("device pull of catalog: version %d changes = %v, want version 1 and %v", pulled.GetVersion(), got, want)
		}
		_, err = trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Shared: "beta"})
		wantError(t, err, connect.CodePermissionDenied, `"beta"`, "tier")
	})
}

// TestSyncConflicts checks Sync's third rule, the per-key conflict check.
func TestSyncConflicts(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)

	// setup seeds user's partition with seed as version 1 and returns a
	// client of user; devices "a" and "b" both synced version 1.
	setup := func(t *testing.T, user string, seed ...*dalvv1.Op) dalvv1connect.ClientServiceClient {
		if got, want := commit(t, b, user, seed...), uint64(1); got != want {
			t.Fatalf("seed commit version = %d, want %d", got, want)
		}
		return deviceClient(t, srv, user)
	}
	// wantConflict sends ops from device "b" at base 1 and checks the
	// answer is a conflict on keys that applies nothing.
	wantConflict := func(t *testing.T, c dalvv1connect.ClientServiceClient, user string, o []*dalvv1.Op, keys []string, changes []string) {
		t.Helper()
		before := readPartition(t, b, user)
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "b", BaseVersion: 1, Batch: 1, Ops: o})
		if got, want := resp.GetStatus(), conflict; got != want {
			t.Fatalf("status = %v, want %v", got, want)
		}
		if got, want := resp.GetConflicts(), keys; !slices.Equal(got, want) {
			t.Fatalf("conflicts = %q, want %q", got, want)
		}
		if got, want := resp.GetVersion(), before.version; got != want {
			t.Fatalf("version = %d, want the partition's %d", got, want)
		}
		if got, want := render(resp.GetChanges()), changes; !slices.Equal(got, want) {
			t.Fatalf("changes = %v, want the remote state %v", got, want)
		}
		if after := readPartition(t, b, user); !after.equal(before) {
			t.Fatalf("after a conflict, partition = %v, want it unchanged: %v", after, before)
		}
	}

	t.Run("PUT vs PUT", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u1", opPut("k", "0"))
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 1, Batch: 1, Ops: ops(opPut("k", "a"))})
		wantConflict(t, c, "u1", ops(opPut("k", "b")), []string{"k"}, []string{"k=a@2"})
	})
	t.Run("DELETE vs PUT", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u2", opPut("k", "0"))
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 1, Batch: 1, Ops: ops(opPut("k", "a"))})
		wantConflict(t, c, "u2", ops(opDelete("k")), []string{"k"}, []string{"k=a@2"})
	})
	t.Run("PUT vs DELETE", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u3", opPut("k", "0"))
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 1, Batch: 1, Ops: ops(opDelete("k"))})
		wantConflict(t, c, "u3", ops(opPut("k", "b")), []string{"k"}, []string{"k=deleted@2"})
	})
	t.Run("PUT vs LIST_ADD", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u4", opPutList("l", "x"))
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 1, Batch: 1, Ops: ops(opAdd("l", "a"))})
		wantConflict(t, c, "u4", ops(opPutList("l", "b")), []string{"l"}, []string{"l=[x a]@2"})
	})
	t.Run("LIST_ADD vs PUT", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u5", opPutList("l", "x"))
		commit(t, b, "u5", opPutList("l", "p"))
		wantConflict(t, c, "u5", ops(opAdd("l", "q")), []string{"l"}, []string{"l=[p]@2"})
	})
	t.Run("LIST_ADD vs DELETE", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u6", opPutList("l", "x"))
		commit(t, b, "u6", opDelete("l"))
		wantConflict(t, c, "u6", ops(opAdd("l", "q")), []string{"l"}, []string{"l=deleted@2"})
	})
	t.Run("list ops merge", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u7", opPutList("l", "x", "y"))
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 1, Batch: 1, Ops: ops(opAdd("l", "a"), opRemove("l", "x"))})
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "b", BaseVersion: 1, Batch: 1, Ops: ops(opAdd("l", "b"), opRemove("l", "y"))})
		if got, want := resp.GetStatus(), accepted; got != want {
			t.Fatalf("status = %v (conflicts %q), want %v", got, resp.GetConflicts(), want)
		}
		if got, want := render(resp.GetChanges()), []string{"l=[a b]@3"}; !slices.Equal(got, want) {
			t.Fatalf("changes = %v, want %v", got, want)
		}
		// A list op with a fresh list on the other side merges as well.
		resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 2, Batch: 2, Ops: ops(opAdd("fresh", "1"))})
		if got, want := resp.GetVersion(), uint64(4); got != want {
			t.Fatalf("version = %d, want %d", got, want)
		}
		resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "b", BaseVersion: 3, Batch: 2, Ops: ops(opAdd("fresh", "2"))})
		if got, want := render(resp.GetChanges()), []string{"fresh=[1 2]@5"}; resp.GetStatus() != accepted || !slices.Equal(got, want) {
			t.Fatalf("status %v, changes = %v, want %v and %v", resp.GetStatus(), got, accepted, want)
		}
		wantPartition(t, b, "u7", partition{5, []string{"fresh=[1 2]@5", "l=[a b]@3"}})
	})
	t.Run("untouched keys do not conflict", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u8", opPut("k1", "0"), opPut("k2", "0"))
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 1, Batch: 1, Ops: ops(opPut("k1", "a"))})
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "b", BaseVersion: 1, Batch: 1, Ops: ops(opPut("k2", "b"))})
		if got, want := resp.GetStatus(), accepted; got != want {
			t.Fatalf("status = %v (conflicts %q), want %v", got, resp.GetConflicts(), want)
		}
		if got, want := render(resp.GetChanges()), []string{"k1=a@2", "k2=b@3"}; !slices.Equal(got, want) {
			t.Fatalf("changes = %v, want %v", got, want)
		}
	})
	t.Run("one conflicting key refuses the whole batch", func(t *testing.T) {
		t.Parallel()
		c := setup(t, "u9", opPut("k1", "0"), opPut("k2", "0"))
		mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "a", BaseVersion: 1, Batch: 1, Ops: ops(opPut("k2", "a"))})
		wantConflict(t, c, "u9", ops(opPut("k1", "b"), opPut("new", "b"), opPut("k2", "b")), []string{"k2"}, []string{"k2=a@2"})
	})
}

// TestSyncAtomicApply checks Sync's fourth rule, all or nothing:
// one bad op refuses the batch, and the refused batch's number is not used up.
func TestSyncAtomicApply(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("s", "scalar"))})

	bad := ops(opPut("a", "1"), opAdd("l", "x"), opAdd("s", "x"), opPut("b", "2"))
	refused(t, b, "alice", func() error {
		_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 2, Ops: bad})
		return err
	}, connect.CodeFailedPrecondition, `"s"`, "scalar")
	refused(t, b, "alice", func() error {
		_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: bad}))
		return err
	}, connect.CodeFailedPrecondition, `"s"`, "scalar")

	// Nothing applied, so batch 2 is still free for the fixed ops.
	resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 2, Ops: ops(opPut("a", "1"), opAdd("l", "x"), opPut("b", "2"))})
	if got, want := resp.GetVersion(), uint64(2); got != want {
		t.Fatalf("version = %d, want %d", got, want)
	}
	wantPartition(t, b, "alice", partition{2, []string{"a=1@2", "b=2@2", "l=[x]@2", "s=scalar@1"}})
}

// TestSyncChangesCollapse checks that an answer carries the changes since
// its base once per key, in version order, own ops and tombstones included.
func TestSyncChangesCollapse(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	commit(t, b, "alice", opPut("gone", "soon"), opPut("kept", "1"))
	for i := range 10 {
		commit(t, b, "alice", opPut("k", fmt.Sprint(i)))
	}
	commit(t, b, "alice", opDelete("gone"))

	resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("mine", "m"), opDelete("never"))})
	want := []string{"kept=1@1", "k=9@11", "gone=deleted@12", "mine=m@13", "never=deleted@13"}
	if got := render(resp.GetChanges()); !slices.Equal(got, want) {
		t.Fatalf("changes from 0 = %v, want %v", got, want)
	}
	if got, want := resp.GetVersion(), uint64(13); got != want {
		t.Fatalf("version = %d, want %d", got, want)
	}
	// From a base in the middle: only what changed after it.
	resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 5})
	if got, want := render(resp.GetChanges()), want[1:]; !slices.Equal(got, want) {
		t.Fatalf("changes from 5 = %v, want %v", got, want)
	}
	// From the head: nothing.
	resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 13})
	if got := render(resp.GetChanges()); len(got) != 0 || resp.GetVersion() != 13 || resp.GetReset_() || resp.GetMore() {
		t.Fatalf("pull from the head = version %d changes %v reset %v more %v, want version 13 and nothing", resp.GetVersion(), got, resp.GetReset_(), resp.GetMore())
	}
}

// TestSyncResetAfterDeletePartition checks that a device that synced an
// erased partition gets a reset, never a stale mix, and that versions go on.
func TestSyncResetAfterDeletePartition(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("a", "1"), opPutList("l", "x"))})
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 2, Ops: ops(opPut("b", "2"))})

	del, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "alice"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := del.Msg.GetVersion(), uint64(3); got != want {
		t.Fatalf("DeletePartition version = %d, want %d", got, want)
	}
	resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 2})
	if !resp.GetReset_() || len(resp.GetChanges()) != 0 || resp.GetVersion() != 3 || resp.GetMore() {
		t.Fatalf("pull after erase = reset %v changes %v version %d more %v, want an empty reset at 3", resp.GetReset_(), render(resp.GetChanges()), resp.GetVersion(), resp.GetMore())
	}

	if got, want := commit(t, b, "alice", opPut("c", "3"), opAdd("l", "new")), uint64(4); got != want {
		t.Fatalf("commit after erase: version %d, want %d (versions are never reused)", got, want)
	}
	resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d2", BaseVersion: 2})
	if got, want := render(resp.GetChanges()), []string{"c=3@4", "l=[new]@4"}; !resp.GetReset_() || !slices.Equal(got, want) {
		t.Fatalf("pull from before the erase = reset %v changes %v, want a reset to %v", resp.GetReset_(), got, want)
	}

	// Ops a device made before the erase meet keys the erase deleted: each
	// conflicts, list ops included, and the answer is a reset.
	for _, o := range []*dalvv1.Op{opPut("a", "again"), opPut("c", "mine"), opAdd("l", "old")} {
		before := readPartition(t, b, "alice")
		resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 2, Batch: 3, Ops: ops(o)})
		if got, want := resp.GetStatus(), conflict; got != want {
			t.Fatalf("%v %s from before the erase: status %v, want %v", o.GetKind(), o.GetKey(), got, want)
		}
		if got, want := resp.GetConflicts(), []string{o.GetKey()}; !slices.Equal(got, want) {
			t.Fatalf("conflicts = %q, want %q", got, want)
		}
		if !resp.GetReset_() {
			t.Fatalf("conflict answer from before the erase is not a reset")
		}
		if after := readPartition(t, b, "alice"); !after.equal(before) {
			t.Fatalf("partition = %v, want it unchanged: %v", after, before)
		}
	}
}

// pagingFlags make one answer 64 KiB, so a few hundred KiB need pages.
var pagingFlags = []string{"--max-response-bytes", "65536", "--max-value-bytes", "16384"}

const pagingLimit = 65536

// fill makes commits backend commits of perCommit 1 KiB values to user's
// partition, and returns each key's value and the version of each commit.
func fill(t testing.TB, b dalvv1connect.BackendServiceClient, user string, commits, perCommit int) (map[string]string, []uint64) {
	t.Helper()
	want := map[string]string{}
	var versions []uint64
	for i := range commits {
		var o []*dalvv1.Op
		for j := range perCommit {
			k := fmt.Sprintf("item/%03d/%02d", i, j)
			v := k + strings.Repeat(".", 1024-len(k))
			want[k] = v
			o = append(o, opPut(k, v))
		}
		versions = append(versions, commit(t, b, user, o...))
	}
	return want, versions
}

// checkPages checks the answers of a pull that crosses the response limit:
// each within the limit, cut between commits (every commit's perCommit
// keys in one answer), in version order, with more on all but the last.
func checkPages(t testing.TB, pages []*dalvv1.SyncResponse, perCommit int) {
	t.Helper()
	for i, p := range pages {
		if n := proto.Size(p); n > pagingLimit {
			t.Errorf("answer %d is %d bytes, over the response limit %d", i, n, pagingLimit)
		}
		if got, want := p.GetMore(), i < len(pages)-1; got != want {
			t.Errorf("answer %d of %d: more = %v, want %v", i, len(pages), got, want)
		}
		perVersion := map[uint64]int{}
		var last uint64
		for _, c := range p.GetChanges() {
			if c.GetVersion() < last {
				t.Errorf("answer %d: change %s@%d after version %d, want version order", i, c.GetKey(), c.GetVersion(), last)
			}
			last = c.GetVersion()
			if strings.HasPrefix(c.GetKey(), "item/") {
				perVersion[c.GetVersion()]++
			}
		}
		for v, n := range perVersion {
			if n != perCommit {
				t.Errorf("answer %d holds %d changes of commit %d, want all %d (cut inside a commit)", i, n, v, perCommit)
			}
		}
		if p.GetMore() && p.GetVersion() != last {
			t.Errorf("answer %d: version %d, want its last change's version %d", i, p.GetVersion(), last)
		}
	}
}

// TestSyncPaging checks that answers never pass the response limit: a large
// catch-up comes in pages cut between commits, and pulling until more is
// false yields every key once.
func TestSyncPaging(t *testing.T) {
	t.Parallel()
	srv := startServer(t, pagingFlags...)
	b := backendClient(t, srv)

	t.Run("catch-up", func(t *testing.T) {
		t.Parallel()
		c := deviceClient(t, srv, "pager")
		want, versions := fill(t, b, "pager", 30, 10) // about 300 KiB
		head := versions[len(versions)-1]

		pages := pullAll(t, c, "d", 0)
		if len(pages) < 5 {
			t.Fatalf("%d answers for about 300 KiB at a 64 KiB limit, want at least 5", len(pages))
		}
		checkPages(t, pages, 10)
		var r replica
		r.apply(pages)
		r.check(t, head, want)

		// From a base in the middle: exactly the keys of later commits.
		mid := versions[14]
		r = replica{}
		r.apply(pullAll(t, c, "d", mid))
		if got, want := len(r.seen), 15*10; got != want {
			t.Fatalf("pull from %d: %d keys, want %d", mid, got, want)
		}
		for k := range r.seen {
			if k < "item/015/" {
				t.Fatalf("pull from %d brought %s, changed before it", mid, k)
			}
		}
	})
	t.Run("own ops after a cut", func(t *testing.T) {
		t.Parallel()
		c := deviceClient(t, srv, "pager2")
		_, versions := fill(t, b, "pager2", 10, 10)
		resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("mine", "m"))})
		if got, want := resp.GetStatus(), accepted; got != want {
			t.Fatalf("status = %v, want %v", got, want)
		}
		if !resp.GetMore() || resp.GetVersion() >= versions[len(versions)-1] {
			t.Fatalf("sync from 0 over about 100 KiB: more %v version %d, want a cut before %d", resp.GetMore(), resp.GetVersion(), versions[len(versions)-1])
		}
		pages := append([]*dalvv1.SyncResponse{resp}, pullAll(t, c, "d", resp.GetVersion())...)
		checkPages(t, pages, 10)
		var r replica
		r.apply(pages)
		if got, want := r.version, versions[len(versions)-1]+1; got != want {
			t.Fatalf("final version = %d, want %d", got, want)
		}
		if got, want := r.values["mine"], "m"; got != want || len(r.seen) != 101 {
			t.Fatalf("mine = %q and %d keys, want %q and 101", got, len(r.seen), want)
		}
		server := readPartition(t, b, "pager2")
		if got, want := r.version, server.version; got != want {
			t.Fatalf("device at version %d, server at %d", got, want)
		}
		if got, want := r.items(), withoutVersions(server.items); !slices.Equal(got, want) {
			t.Fatalf("device holds %d keys, server %d: they differ", len(got), len(want))
		}
	})
	t.Run("reset in pages", func(t *testing.T) {
		t.Parallel()
		c := deviceClient(t, srv, "resetter")
		fill(t, b, "resetter", 3, 10)
		old := readPartition(t, b, "resetter").version
		if _, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "resetter"})); err != nil {
			t.Fatal(err)
		}
		want, versions := fill(t, b, "resetter", 30, 10)

		pages := pullAll(t, c, "d", old)
		if !pages[0].GetReset_() || !pages[0].GetMore() {
			t.Fatalf("first answer from before the erase: reset %v more %v, want both", pages[0].GetReset_(), pages[0].GetMore())
		}
		if len(pages) > 10 {
			t.Fatalf("%d answers for about 300 KiB at a 64 KiB limit, want at most 10", len(pages))
		}
		checkPages(t, pages, 10)
		r := replica{values: map[string]string{"stale": "from before the erase"}}
		r.apply(pages)
		r.check(t, versions[len(versions)-1], want)
	})
}

// TestSyncRefusals checks the syncs that are refused as invalid.
func TestSyncRefusals(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("a", "1"))})

	for _, tc := range []struct {
		name  string
		req   *dalvv1.SyncRequest
		words []string
	}{
		{"pull ahead of the partition", &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 2}, []string{"2", "ahead", "at version 1"}},
		{"ops ahead of the partition", &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 9, Batch: 2, Ops: ops(opPut("a", "2"))}, []string{"9", "ahead", "at version 1"}},
		{"ops with batch 0", &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Ops: ops(opPut("a", "2"))}, []string{"batch"}},
		{"ops with batch 0 from a new device", &dalvv1.SyncRequest{DeviceId: "new", BaseVersion: 1, Ops: ops(opPut("a", "2"))}, []string{"batch"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refused(t, b, "alice", func() error {
				_, err := trySync(t, c, tc.req)
				return err
			}, connect.CodeInvalidArgument, tc.words...)
		})
	}
}

// TestSyncRetention checks that catch-up past the retention is a reset,
// never a silent gap, and that a reset longer than one answer continues
// with the horizon it started with.
func TestSyncRetention(t *testing.T) {
	t.Parallel()
	srv := startServer(t, append([]string{"--retention", "2s"}, pagingFlags...)...)
	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	want, _ := fill(t, b, "alice", 30, 10)
	put := commit(t, b, "alice", opPut("tmp", "x"))
	gone := commit(t, b, "alice", opDelete("tmp"))

	// Until compaction, a device that saw tmp learns of its deletion; after,
	// it gets a reset. Nothing in between.
	var last *dalvv1.SyncResponse
	wait.ForEvery(t, 20*time.Second, 100*time.Millisecond, func() error {
		last = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: put})
		if last.GetReset_() {
			return nil
		}
		if got, want := render(last.GetChanges()), []string{fmt.Sprintf("tmp=deleted@%d", gone)}; !slices.Equal(got, want) {
			t.Fatalf("pull from %d before compaction: changes %v, want %v (a silent gap)", put, got, want)
		}
		return errors.New("no reset yet")
	})
	if got, want := last.GetHorizon(), gone; got != want {
		t.Fatalf("horizon after compaction = %d, want %d", got, want)
	}

	// The reset is 300 KiB from version 0 while the horizon is the last
	// version: continuing must not start over.
	for _, base := range []uint64{0, put} {
		pages := pullAll(t, c, "d", base)
		if len(pages) < 5 || !pages[0].GetReset_() {
			t.Fatalf("pull from %d: %d answers, reset %v; want a reset in at least 5", base, len(pages), pages[0].GetReset_())
		}
		checkPages(t, pages, 10)
		var r replica
		r.apply(pages)
		if got, want := r.version, gone; got != want {
			t.Fatalf("pull from %d: final version %d, want %d", base, got, want)
		}
		for k, n := range r.seen {
			if n != 1 {
				t.Errorf("pull from %d: key %s came %d times, want once", base, k, n)
			}
		}
		if got, want := len(r.values), len(want); got != want {
			t.Fatalf("pull from %d: %d keys, want %d", base, got, want)
		}
	}

	// tmp was put and deleted after base put-1; its tombstone is gone now.
	// A list op recreating it must not hide that from a device at put-1.
	relisted := commit(t, b, "alice", opAdd("tmp", "backend"))
	before := readPartition(t, b, "alice")
	resp := mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: put - 1, Batch: 1, Ops: ops(opAdd("tmp", "device"))})
	if got, want := resp.GetStatus(), conflict; got != want {
		t.Fatalf("LIST_ADD tmp from %d, with tmp put and deleted after it: status %v, want %v", put-1, got, want)
	}
	wantPartition(t, b, "alice", before)
	// A device that already saw the recreated list merges as usual.
	resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: relisted, Batch: 1, Ops: ops(opAdd("tmp", "device"))})
	if got, want := render(resp.GetChanges()), []string{fmt.Sprintf("tmp=[backend device]@%d", relisted+1)}; resp.GetStatus() != accepted || !slices.Equal(got, want) {
		t.Fatalf("LIST_ADD tmp from %d: status %v changes %v, want %v and %v", relisted, resp.GetStatus(), got, accepted, want)
	}
}

// TestGetConfig checks that a device learns the domain split, the limits in
// force and its user id.
func TestGetConfig(t *testing.T) {
	t.Parallel()
	srv := startServer(t,
		"--system-prefix", "sys/", "--system-prefix", "admin/",
		"--max-key-bytes", "100", "--max-value-bytes", "2000", "--max-ops", "7",
		"--max-request-bytes", "50000", "--max-response-bytes", "8192",
		"--shared", "catalog", "--shared", "beta=tier:beta")
	resp, err := deviceClient(t, srv, "alice").GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Msg
	want := &dalvv1.GetConfigResponse{
		SystemPrefixes:   []string{"sys/", "admin/"},
		SharedPartitions: []string{"catalog"},
		MaxKeyBytes:      100,
		MaxValueBytes:    2000,
		MaxOps:           7,
		MaxRequestBytes:  50000,
		MaxResponseBytes: 8192,
		User:             "alice",
	}
	if !proto.Equal(got, want) {
		t.Fatalf("GetConfig = %v, want %v", got, want)
	}

	// The defaults, with a token that may read a claim-gated partition.
	srv = startServer(t, "--shared", "beta=tier:beta")
	tok := sign(t, hs256, map[string]any{"sub": "bob", "exp": time.Now().Add(time.Hour).Unix(), "tier": "beta"})
	resp, err = clientWith(srv, "Bearer "+tok).GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	want = &dalvv1.GetConfigResponse{
		SystemPrefixes:   []string{"sys/"},
		SharedPartitions: []string{"beta"},
		MaxKeyBytes:      1024,
		MaxValueBytes:    1 << 20,
		MaxOps:           1000,
		MaxRequestBytes:  8 << 20,
		MaxResponseBytes: 4 << 20,
		User:             "bob",
	}
	if got := resp.Msg; !proto.Equal(got, want) {
		t.Fatalf("GetConfig with defaults = %v, want %v", got, want)
	}
}
