package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// TestBackendGet checks that Get answers the present keys among those
// asked, in the order asked, with the partition's version.
func TestBackendGet(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	commit(t, b, "alice", opPut("a", "1"), opPutList("b", "x", "y"), opPut("c", "3"))
	commit(t, b, "alice", opDelete("c"))

	resp, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "alice", Keys: []string{"c", "b", "missing", "a"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := resp.Msg.GetVersion(), uint64(2); got != want {
		t.Fatalf("version = %d, want %d", got, want)
	}
	if got, want := render(resp.Msg.GetItems()), []string{"b=[x y]@1", "a=1@1"}; !slices.Equal(got, want) {
		t.Fatalf("items = %v, want %v", got, want)
	}

	resp, err = b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "nobody", Keys: []string{"a"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Msg; got.GetVersion() != 0 || len(got.GetItems()) != 0 {
		t.Fatalf("Get of a partition never written = version %d items %v, want version 0 and none", got.GetVersion(), render(got.GetItems()))
	}

	_, err = b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "alice", Keys: []string{"a", ""}}))
	wantError(t, err, connect.CodeInvalidArgument, "empty key")
}

// TestBackendListPages checks that List pages through a prefix in key
// order, every key once, and refuses a page token it did not give.
func TestBackendListPages(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	var (
		want []string
		o    []*dalvv1.Op
	)
	for i := range 50 {
		k := fmt.Sprintf("p/%02d", i)
		want = append(want, k+"=v"+k+"@1")
		o = append(o, opPut(k, "v"+k))
	}
	commit(t, b, "alice", append(o, opPut("p", "not under p/"), opPut("q/0", "not under p/"), opPut("p/zz", "deleted"))...)
	version := commit(t, b, "alice", opDelete("p/zz"))

	var (
		got   []string
		token string
		pages int
	)
	for {
		resp, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: "alice", Prefix: "p/", PageSize: 7, PageToken: token}))
		if err != nil {
			t.Fatalf("List page %d: %v", pages, err)
		}
		pages++
		if n := len(resp.Msg.GetItems()); n > 7 || n == 0 {
			t.Fatalf("page %d has %d items, want 1 to 7", pages, n)
		}
		if got, want := resp.Msg.GetVersion(), version; got != want {
			t.Fatalf("page %d: version %d, want %d", pages, got, want)
		}
		got = append(got, render(resp.Msg.GetItems())...)
		if token = resp.Msg.GetNextPageToken(); token == "" {
			break
		}
		if pages > 50 {
			t.Fatal("List does not end")
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	if got, want := pages, 8; got != want {
		t.Fatalf("%d pages of at most 7 for 50 keys, want %d", got, want)
	}

	// The default page size.
	resp, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: "alice"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(resp.Msg.GetItems()), 52; got != want || resp.Msg.GetNextPageToken() != "" {
		t.Fatalf("List of everything: %d items, next %q; want %d and no next page", got, resp.Msg.GetNextPageToken(), want)
	}

	for _, bad := range []string{"garbage!", base64.RawURLEncoding.EncodeToString([]byte("x:p/03"))} {
		_, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: "alice", Prefix: "p/", PageToken: bad}))
		wantError(t, err, connect.CodeInvalidArgument, "pageToken", "nextPageToken")
	}
}

// TestBackendCommit checks expectedVersion and the choice of partition.
func TestBackendCommit(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--shared", "catalog")
	b := backendClient(t, srv)
	zero, one := uint64(0), uint64(1)

	resp, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opPut("a", "1")), ExpectedVersion: &zero}))
	if err != nil {
		t.Fatalf("Commit expecting version 0 of an empty partition: %v", err)
	}
	if got, want := resp.Msg.GetVersion(), uint64(1); got != want {
		t.Fatalf("version = %d, want %d", got, want)
	}
	for _, expected := range []uint64{0, 2} {
		refused(t, b, "alice", func() error {
			_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opPut("a", "stale"), opPut("b", "stale")), ExpectedVersion: &expected}))
			return err
		}, connect.CodeFailedPrecondition, fmt.Sprintf("expectedVersion is %d", expected), "at version 1")
	}
	resp, err = b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opPut("a", "2"), opPut("b", "2")), ExpectedVersion: &one}))
	if err != nil {
		t.Fatalf("Commit expecting the current version: %v", err)
	}
	if got, want := resp.Msg.GetVersion(), uint64(2); got != want {
		t.Fatalf("version = %d, want %d", got, want)
	}
	wantPartition(t, b, "alice", partition{2, []string{"a=2@2", "b=2@2"}})

	// Exactly one of user and shared, on every method.
	for _, tc := range []struct {
		name         string
		user, shared string
		words        []string
	}{
		{"both", "alice", "catalog", []string{"not both"}},
		{"neither", "", "", []string{"set user", "or shared"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, call := range []struct {
				name string
				do   func() error
			}{
				{"Get", func() error {
					_, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: tc.user, Shared: tc.shared, Keys: []string{"a"}}))
					return err
				}},
				{"List", func() error {
					_, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: tc.user, Shared: tc.shared}))
					return err
				}},
				{"Commit", func() error {
					_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: tc.user, Shared: tc.shared, Ops: ops(opPut("a", "3"))}))
					return err
				}},
				{"DeletePartition", func() error {
					_, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: tc.user, Shared: tc.shared}))
					return err
				}},
			} {
				t.Run(call.name, func(t *testing.T) {
					refused(t, b, "alice", call.do, connect.CodeInvalidArgument, tc.words...)
				})
			}
		})
	}
	// The shared partition was not touched either.
	list, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{Shared: "catalog"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := list.Msg; got.GetVersion() != 0 || len(got.GetItems()) != 0 {
		t.Fatalf("shared catalog = version %d items %v, want untouched", got.GetVersion(), render(got.GetItems()))
	}

	refused(t, b, "alice", func() error {
		_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "alice"}))
		return err
	}, connect.CodeInvalidArgument, "at least one op")
}

// TestBackendDeletePartition checks that an erase leaves no data, that
// versions go on, and that devices that synced before get a reset and never
// replay a batch applied before the erase.
func TestBackendDeletePartition(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b, c := backendClient(t, srv), deviceClient(t, srv, "alice")
	batch1 := &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("a", "1"), opAdd("l", "x"))}
	mustSync(t, c, batch1)
	commit(t, b, "alice", opPut("sys/plan", "pro"), opPut("b", "2"))
	commit(t, b, "bob", opPut("a", "bob's"))

	del, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "alice"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := del.Msg.GetVersion(), uint64(3); got != want {
		t.Fatalf("erase version = %d, want %d", got, want)
	}
	wantPartition(t, b, "alice", partition{3, nil})
	get, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "alice", Keys: []string{"a", "l", "sys/plan", "b"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got := render(get.Msg.GetItems()); len(got) != 0 || get.Msg.GetVersion() != 3 {
		t.Fatalf("Get after erase = version %d items %v, want version 3 and none", get.Msg.GetVersion(), got)
	}
	wantPartition(t, b, "bob", partition{1, []string{"a=bob's@1"}})

	// The device's batch 1, answered before the erase, is not applied again.
	resp := mustSync(t, c, batch1)
	if got, want := resp.GetStatus(), accepted; got != want {
		t.Fatalf("batch 1 resent after the erase: status %v, want %v", got, want)
	}
	wantPartition(t, b, "alice", partition{3, nil})

	if got, want := commit(t, b, "alice", opPut("fresh", "1")), uint64(4); got != want {
		t.Fatalf("commit after erase: version %d, want %d", got, want)
	}
	resp = mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 2})
	if got, want := render(resp.GetChanges()), []string{"fresh=1@4"}; !resp.GetReset_() || !slices.Equal(got, want) || resp.GetVersion() != 4 {
		t.Fatalf("pull from before the erase = reset %v changes %v version %d, want a reset to %v at 4", resp.GetReset_(), got, resp.GetVersion(), want)
	}

	// Erasing a partition never written records the erase too.
	del, err = b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "nobody"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := del.Msg.GetVersion(), uint64(1); got != want {
		t.Fatalf("erase of an empty partition: version %d, want %d", got, want)
	}
}

// history records which write made each version of one key, and fails on a
// version made twice.
type history struct {
	mu        sync.Mutex
	byVersion map[uint64]string
	seen      []versionValue // observed in answers, checked at the end
}

type versionValue struct {
	version uint64
	value   string
}

func (h *history) made(version uint64, value string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byVersion == nil {
		h.byVersion = map[uint64]string{}
	}
	if old, dup := h.byVersion[version]; dup {
		return fmt.Errorf("version %d made twice: by %q and by %q", version, old, value)
	}
	h.byVersion[version] = value
	return nil
}

func (h *history) observed(version uint64, value string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen = append(h.seen, versionValue{version, value})
}

// check checks versions 1 to head were each made once, the key holds the
// write of head, and every value seen in an answer is the write of its
// version.
func (h *history) check(t testing.TB, head uint64, final string) {
	t.Helper()
	if got, want := uint64(len(h.byVersion)), head; got != want {
		t.Fatalf("%d commits recorded, partition at version %d: versions are not dense", got, want)
	}
	for v := uint64(1); v <= head; v++ {
		if _, ok := h.byVersion[v]; !ok {
			t.Fatalf("no commit got version %d of %d", v, head)
		}
	}
	if got, want := final, h.byVersion[head]; got != want {
		t.Fatalf("final value %q, want %q, the write of version %d", got, want, head)
	}
	for _, s := range h.seen {
		if got, want := s.value, h.byVersion[s.version]; got != want {
			t.Fatalf("an answer said version %d holds %q, but %q made it", s.version, got, want)
		}
	}
}

// keyIn returns the change of key in changes, or nil.
func keyIn(changes []*dalvv1.Change, key string) *dalvv1.Change {
	for _, c := range changes {
		if c.GetKey() == key {
			return c
		}
	}
	return nil
}

// racer is one device doing read-modify-writes of key "k" until it has
// made n, each at the version it last saw.
func racer(c dalvv1connect.ClientServiceClient, dev string, n int, h *history, next func(current string, made int) string) (conflicts int, err error) {
	var (
		base, batch uint64
		current     string
		made        int
	)
	for made < n {
		batch++
		val := next(current, made)
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := c.Sync(rctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: dev, BaseVersion: base, Batch: batch, Ops: ops(opPut("k", val))}))
		cancel()
		if err != nil {
			return conflicts, fmt.Errorf("%s batch %d: %w", dev, batch, err)
		}
		m := resp.Msg
		ch := keyIn(m.GetChanges(), "k")
		switch m.GetStatus() {
		case accepted:
			// Every commit writes k, so one over a stale base was a lost update.
			if m.GetVersion() != base+1 {
				return conflicts, fmt.Errorf("%s: PUT at base %d accepted as version %d, want a conflict", dev, base, m.GetVersion())
			}
			if ch == nil || show(ch.GetValue()) != val || ch.GetVersion() != m.GetVersion() {
				return conflicts, fmt.Errorf("%s: accepted answer carries %v, want k=%s@%d", dev, render(m.GetChanges()), val, m.GetVersion())
			}
			if err := h.made(m.GetVersion(), val); err != nil {
				return conflicts, err
			}
			made++
		case conflict:
			conflicts++
			if !slices.Equal(m.GetConflicts(), []string{"k"}) || m.GetVersion() <= base || ch == nil || ch.GetVersion() != m.GetVersion() {
				return conflicts, fmt.Errorf("%s: conflict at base %d = conflicts %q version %d changes %v", dev, base, m.GetConflicts(), m.GetVersion(), render(m.GetChanges()))
			}
			h.observed(ch.GetVersion(), show(ch.GetValue()))
		default:
			return conflicts, fmt.Errorf("%s: status %v", dev, m.GetStatus())
		}
		base, current = m.GetVersion(), show(ch.GetValue())
	}
	return conflicts, nil
}

// TestBackendCommitRacesDeviceSyncs races backend commits and device syncs
// on one key: every commit gets its own version, densely; a device whose
// base is stale gets a conflict; nothing is lost.
func TestBackendCommitRacesDeviceSyncs(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--rate-limit", "-1")
	b := backendClient(t, srv)
	const (
		backendWrites = 100
		devices       = 4
		deviceWrites  = 25
	)
	var (
		h         history
		wg        sync.WaitGroup
		errs      = make(chan error, devices+1)
		conflicts = make([]int, devices)
	)
	wg.Add(devices + 1)
	go func() {
		defer wg.Done()
		for i := range backendWrites {
			val := fmt.Sprintf("backend/%d", i)
			rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			resp, err := b.Commit(rctx, connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: ops(opPut("k", val))}))
			cancel()
			if err == nil {
				err = h.made(resp.Msg.GetVersion(), val)
			}
			if err != nil {
				errs <- fmt.Errorf("backend commit %d: %w", i, err)
				return
			}
		}
	}()
	for d := range devices {
		c := deviceClient(t, srv, "alice")
		go func() {
			defer wg.Done()
			var err error
			conflicts[d], err = racer(c, fmt.Sprint("dev", d), deviceWrites, &h, func(_ string, made int) string {
				return fmt.Sprintf("dev%d/%d", d, made)
			})
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	get, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "alice", Keys: []string{"k"}}))
	if err != nil {
		t.Fatal(err)
	}
	head := get.Msg.GetVersion()
	if got, want := head, uint64(backendWrites+devices*deviceWrites); got != want {
		t.Fatalf("partition at version %d after %d commits", got, want)
	}
	h.check(t, head, show(get.Msg.GetItems()[0].GetValue()))
	// Whoever committed first, the other devices' first syncs (base 0) met
	// a newer version.
	total := 0
	for _, n := range conflicts {
		total += n
	}
	if total < devices-1 {
		t.Fatalf("%d conflicts, want at least %d", total, devices-1)
	}
}

// TestConcurrentDeviceIncrements has devices of one user increment one
// counter, retrying on conflict: the counter ends at the number of accepted
// increments, with one dense version each.
func TestConcurrentDeviceIncrements(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--rate-limit", "-1")
	b := backendClient(t, srv)
	const devices, increments = 8, 50
	var (
		h    history
		wg   sync.WaitGroup
		errs = make(chan error, devices)
	)
	for d := range devices {
		wg.Add(1)
		c := deviceClient(t, srv, "alice")
		go func() {
			defer wg.Done()
			_, err := racer(c, fmt.Sprint("dev", d), increments, &h, func(current string, _ int) string {
				n := 0
				if current != "<unset>" && current != "" {
					var err error
					if n, err = strconv.Atoi(current); err != nil {
						panic(fmt.Sprintf("counter holds %q", current))
					}
				}
				return strconv.Itoa(n + 1)
			})
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	want := devices * increments
	wantPartition(t, b, "alice", partition{uint64(want), []string{fmt.Sprintf("k=%d@%d", want, want)}})
	h.check(t, uint64(want), strconv.Itoa(want))
	for v := 1; v <= want; v++ {
		if got, want := h.byVersion[uint64(v)], strconv.Itoa(v); got != want {
			t.Fatalf("version %d set the counter to %s, want %s", v, got, want)
		}
	}
}
