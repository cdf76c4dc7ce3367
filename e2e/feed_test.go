package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file holds the tests of the backend change feed (BackendService.Watch):
// exactly one delivery of each commit to a consumer that resumes from the
// last cursor it got, across reconnects and a SIGKILL; "start", the empty
// cursor, prefixes, erases, bad and compacted cursors, and shutdown.

// watchFeed opens the change feed with the test backend key.
func watchFeed(t testing.TB, srv *proc.Server, req *dalvv1.BackendServiceWatchRequest) *streamPump[dalvv1.ChangeEvent] {
	t.Helper()
	c := dalvv1connect.NewBackendServiceClient(http.DefaultClient, srv.URL())
	return pumpStream(t, func(ctx context.Context) (*connect.ServerStreamForClient[dalvv1.ChangeEvent], error) {
		return c.Watch(ctx, authorized(req, "Bearer "+testBackendKey))
	})
}

// feedNext returns the next event of the feed that is not a heartbeat,
// failing the test when none comes within streamWait.
func feedNext(t testing.TB, f *streamPump[dalvv1.ChangeEvent]) *dalvv1.ChangeEvent {
	t.Helper()
	deadline := time.Now().Add(streamWait)
	for {
		if ev := f.mustBy(t, deadline); !ev.GetHeartbeat() {
			return ev
		}
	}
}

// feedStart returns the cursor of the heartbeat a feed opens with.
func feedStart(t testing.TB, f *streamPump[dalvv1.ChangeEvent]) string {
	t.Helper()
	ev := f.must(t)
	if !ev.GetHeartbeat() || ev.GetCursor() == "" {
		t.Fatalf("the feed opened with %v, want a heartbeat with a cursor", ev)
	}
	return ev.GetCursor()
}

// feedPart names an event's or a commit's partition as "user:NAME" or
// "shared:NAME".
func feedPart(ev *dalvv1.ChangeEvent) string {
	if ev.GetShared() != "" {
		return "shared:" + ev.GetShared()
	}
	return "user:" + ev.GetUser()
}

// feedOps renders ops as "PUT k=v", "DELETE k", "LIST_ADD k=e"...
func feedOps(o []*dalvv1.Op) string {
	var b strings.Builder
	for i, op := range o {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strings.TrimPrefix(op.GetKind().String(), "OP_KIND_") + " " + op.GetKey())
		if op.GetValue() != nil {
			b.WriteString("=" + show(op.GetValue()))
		}
	}
	return b.String()
}

// feedRender renders an event as "user:NAME@VERSION: OPS".
func feedRender(ev *dalvv1.ChangeEvent) string {
	s := fmt.Sprintf("%s@%d:", feedPart(ev), ev.GetVersion())
	if ev.GetErased() {
		s += " ERASED"
	}
	if len(ev.GetOps()) > 0 {
		s += " " + feedOps(ev.GetOps())
	}
	return s
}

// feedLog is what a consumer received: each commit's ops by
// "partition@version", the order per partition checked as they come.
type feedLog struct {
	ops    map[string]string // "user:u@3" -> ops
	cursor map[string]string // "user:u@3" -> its cursor
	last   map[string]uint64 // partition -> last version received
	n      int
}

func newFeedLog() *feedLog {
	return &feedLog{ops: map[string]string{}, cursor: map[string]string{}, last: map[string]uint64{}}
}

// add records ev, failing the test on a duplicate or a version out of
// order within its partition.
func (l *feedLog) add(t testing.TB, ev *dalvv1.ChangeEvent) {
	t.Helper()
	part := feedPart(ev)
	id := fmt.Sprintf("%s@%d", part, ev.GetVersion())
	if _, dup := l.ops[id]; dup {
		t.Fatalf("the feed delivered %s twice (a consumer resuming from the last cursor it got must see each commit once)", id)
	}
	if ev.GetVersion() <= l.last[part] {
		t.Fatalf("the feed delivered %s after version %d of the same partition", id, l.last[part])
	}
	if ev.GetCursor() == "" {
		t.Fatalf("event %s has no cursor", id)
	}
	l.last[part] = ev.GetVersion()
	l.ops[id] = feedOps(ev.GetOps())
	l.cursor[id] = ev.GetCursor()
	l.n++
}

// feedMade records the commits the test made: ops by "partition@version".
type feedMade struct {
	mu  gosync.Mutex
	ops map[string]string
}

func (m *feedMade) add(part string, version uint64, o []*dalvv1.Op) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ops == nil {
		m.ops = map[string]string{}
	}
	m.ops[fmt.Sprintf("%s@%d", part, version)] = feedOps(o)
}

// check fails the test unless got holds exactly the commits made, each with
// its ops.
func (m *feedMade) check(t testing.TB, got *feedLog) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	var missing, extra []string
	for id, o := range m.ops {
		g, ok := got.ops[id]
		switch {
		case !ok:
			missing = append(missing, id)
		case g != o:
			t.Errorf("the feed delivered %s with ops %q, want %q", id, g, o)
		}
	}
	for id := range got.ops {
		if _, ok := m.ops[id]; !ok {
			extra = append(extra, id)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Fatalf("of %d commits made, the feed missed %d: %v; and delivered %d not made: %v", len(m.ops), len(missing), missing[:min(10, len(missing))], len(extra), extra[:min(10, len(extra))])
	}
}

// feedCommitter makes commits to users, as devices (syncs) and as a
// backend (commits), and records them in made. Its keys are its own, so
// its device syncs never conflict.
type feedCommitter struct {
	id    string
	b     dalvv1connect.BackendServiceClient
	devs  map[string]dalvv1connect.ClientServiceClient // per user
	base  map[string]uint64                            // device's last version, per user
	batch map[string]uint64                            // device's last batch, per user
	keys  map[string][]string                          // keys it put and did not delete, per user
	made  *feedMade
	n     int
}

func newFeedCommitter(t testing.TB, srv *proc.Server, id string, users []string, made *feedMade) *feedCommitter {
	c := &feedCommitter{id: id, b: backendClient(t, srv), devs: map[string]dalvv1connect.ClientServiceClient{},
		base: map[string]uint64{}, batch: map[string]uint64{}, keys: map[string][]string{}, made: made}
	for _, u := range users {
		c.devs[u] = deviceClient(t, srv, u)
	}
	return c
}

// next builds the ops of the committer's next commit to user. Its device
// deletes no key: the backend may have put it after the device's base.
func (c *feedCommitter) next(user string, asDevice bool) []*dalvv1.Op {
	c.n++
	key := fmt.Sprintf("%s/%d", c.id, c.n)
	o := ops(opPut(key, fmt.Sprint("v", c.n)))
	switch c.n % 4 {
	case 1:
		o = append(o, opAdd("list", key))
	case 2:
		if ks := c.keys[user]; len(ks) > 0 && !asDevice {
			o = append(o, opDelete(ks[0]))
		}
	case 3:
		o = append(o, opRemove("list", key), opPutList(key+"/l", "x", "y"))
	}
	return o
}

// commit makes one commit of o to user, by device sync when asDevice, and
// returns its version.
func (c *feedCommitter) commit(ctx context.Context, user string, o []*dalvv1.Op, asDevice bool) (uint64, error) {
	var version uint64
	if asDevice {
		resp, err := c.devs[user].Sync(ctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: c.id, BaseVersion: c.base[user], Batch: c.batch[user] + 1, Ops: o}))
		if err != nil {
			return 0, err
		}
		if resp.Msg.GetStatus() != accepted || resp.Msg.GetMore() {
			return 0, fmt.Errorf("%s's sync to %s: status %v more %v", c.id, user, resp.Msg.GetStatus(), resp.Msg.GetMore())
		}
		c.batch[user]++
		version, c.base[user] = resp.Msg.GetVersion(), resp.Msg.GetVersion()
	} else {
		resp, err := c.b.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: o}))
		if err != nil {
			return 0, err
		}
		version = resp.Msg.GetVersion()
	}
	for _, op := range o {
		switch op.GetKind() {
		case dalvv1.OpKind_OP_KIND_PUT:
			c.keys[user] = append(c.keys[user], op.GetKey())
		case dalvv1.OpKind_OP_KIND_DELETE:
			c.keys[user] = slices.DeleteFunc(c.keys[user], func(k string) bool { return k == op.GetKey() })
		}
	}
	c.made.add("user:"+user, version, o)
	return version, nil
}

// TestFeedExactlyOnceAcrossReconnects checks that a consumer that starts at
// "start" and disconnects after every 7th event, resuming from the last
// cursor it got, sees each of 1,000 commits to 50 users (device syncs and
// backend commits, made concurrently) exactly once, in version order per
// partition, with its ops.
func TestFeedExactlyOnceAcrossReconnects(t *testing.T) {
	t.Parallel()
	const (
		nUsers      = 50
		nCommitters = 8
		total       = 1000
		k           = 7
	)
	srv := startServer(t)
	var users []string
	for i := range nUsers {
		users = append(users, fmt.Sprintf("feed-u%02d", i))
	}
	made := &feedMade{}
	var (
		wg   gosync.WaitGroup
		errs = make(chan error, nCommitters)
	)
	for g := range nCommitters {
		c := newFeedCommitter(t, srv, fmt.Sprint("c", g), users, made)
		wg.Go(func() {
			for i := range total / nCommitters {
				user, asDevice := users[(g*7+i)%nUsers], (g+i)%3 == 0
				if _, err := c.commit(context.Background(), user, c.next(user, asDevice), asDevice); err != nil {
					errs <- err
					return
				}
			}
		})
	}

	got := newFeedLog()
	cursor, reconnects := "start", 0
	for got.n < total {
		f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: cursor})
		deadline := time.Now().Add(streamWait) // for the next commit, heartbeats aside
		for n := 0; n < k && got.n < total; {
			ev := f.mustBy(t, deadline)
			cursor = ev.GetCursor()
			if ev.GetHeartbeat() {
				continue
			}
			got.add(t, ev)
			n++
			deadline = time.Now().Add(streamWait)
		}
		f.stop()
		reconnects++
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	made.check(t, got)

	// Nothing more is pending: from the last cursor, the next event is a
	// commit made now.
	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: cursor})
	if c := feedStart(t, f); c != cursor {
		t.Errorf("the feed resumed from %q opened with cursor %q", cursor, c)
	}
	v := commit(t, backendClient(t, srv), users[0], opPut("sentinel", "x"))
	if got, want := feedRender(feedNext(t, f)), fmt.Sprintf("user:%s@%d: PUT sentinel=x", users[0], v); got != want {
		t.Fatalf("after all %d commits, the feed delivered %q, want %q", total, got, want)
	}
	t.Logf("%d commits over %d users, %d reconnects", total, nUsers, reconnects)
}

// TestFeedAcrossKill checks that cursors survive a SIGKILL and restart on
// the same data directory: a consumer that resumes from the last cursor it
// got before the kill sees every commit exactly once, and a new consumer
// from "start" gets the same cursors for the same commits.
func TestFeedAcrossKill(t *testing.T) {
	t.Parallel()
	const nUsers = 10
	data := t.TempDir() + "/data"
	srv := startServerOn(t, data)
	var users []string
	for i := range nUsers {
		users = append(users, fmt.Sprintf("kill-u%d", i))
	}

	// One committer per user, so a user's versions go in the order of its
	// commits and the one in doubt at the kill, if any, is the last.
	made := &feedMade{}
	inDoubt := make([][]*dalvv1.Op, nUsers) // the commit that failed, per user
	var (
		wg   gosync.WaitGroup
		stop atomic.Bool
	)
	for u, user := range users {
		c := newFeedCommitter(t, srv, fmt.Sprint("k", u), []string{user}, made)
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				o := c.next(user, i%2 == 0)
				if _, err := c.commit(context.Background(), user, o, i%2 == 0); err != nil {
					inDoubt[u] = o
					return
				}
			}
		})
	}
	got := newFeedLog()
	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	cursor := feedStart(t, f)
	for deadline := time.Now().Add(streamWait); got.n < 150; {
		ev := f.mustBy(t, deadline)
		cursor = ev.GetCursor()
		if !ev.GetHeartbeat() {
			got.add(t, ev)
			deadline = time.Now().Add(streamWait)
		}
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	// Whatever was on its way before the kill still counts.
	for {
		ev, err := f.next(t, streamWait)
		if err != nil {
			break
		}
		cursor = ev.GetCursor()
		if !ev.GetHeartbeat() {
			got.add(t, ev)
		}
	}
	stop.Store(true)
	wg.Wait()
	before := maps.Clone(got.cursor)
	t.Logf("killed after the consumer got %d commits", got.n)

	srv = startServerOn(t, data)
	b := backendClient(t, srv)
	// A commit that failed at the kill may or may not have applied; if it
	// did, it is the user's last version, with the ops tried.
	heads := map[string]uint64{}
	for u, user := range users {
		resp, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: user}))
		if err != nil {
			t.Fatal(err)
		}
		heads[user] = resp.Msg.GetVersion()
		id := fmt.Sprintf("user:%s@%d", user, heads[user])
		made.mu.Lock()
		_, acked := made.ops[id]
		made.mu.Unlock()
		switch {
		case acked:
		case inDoubt[u] != nil && heads[user] > 0:
			t.Logf("%s: the commit in flight at the kill applied, as version %d", user, heads[user])
			made.add("user:"+user, heads[user], inDoubt[u])
		default:
			t.Fatalf("%s is at version %d, which no commit made", user, heads[user])
		}
	}

	// Cursors are stable: from "start", the same commits have the same
	// cursors as before the kill.
	all := newFeedLog()
	f = watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	feedStart(t, f)
	made.mu.Lock()
	nMade := len(made.ops)
	made.mu.Unlock()
	for all.n < nMade {
		all.add(t, feedNext(t, f))
	}
	f.stop()
	made.check(t, all)
	for id, c := range before {
		if all.cursor[id] != c {
			t.Fatalf("%s had cursor %q before the kill and %q after", id, c, all.cursor[id])
		}
	}

	// The consumer resumes from its last cursor; more commits come.
	f = watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: cursor})
	if c := feedStart(t, f); c != cursor {
		t.Errorf("the feed resumed from %q opened with cursor %q", cursor, c)
	}
	for _, user := range users {
		c := newFeedCommitter(t, srv, "after-"+user, []string{user}, made)
		for i := range 3 {
			if _, err := c.commit(ctx(t), user, c.next(user, i == 1), i == 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	made.mu.Lock()
	nMade = len(made.ops)
	made.mu.Unlock()
	for got.n < nMade {
		got.add(t, feedNext(t, f))
	}
	made.check(t, got)
}

// TestFeedFromNow checks that an empty cursor starts the feed at the
// present: earlier commits are not delivered, later ones are; and that the
// cursor it opens with resumes there.
func TestFeedFromNow(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	commit(t, b, "now", opPut("before", "1"))
	commit(t, b, "other", opPut("before", "1"))

	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{})
	opened := feedStart(t, f)
	v3 := commit(t, b, "now", opPut("after", "2"))
	v4 := commit(t, b, "now", opDelete("before"))
	want := []string{fmt.Sprintf("user:now@%d: PUT after=2", v3), fmt.Sprintf("user:now@%d: DELETE before", v4)}
	for _, w := range want {
		if got := feedRender(feedNext(t, f)); got != w {
			t.Fatalf("the feed from now delivered %q, want %q (commits before it opened must not come)", got, w)
		}
	}
	// The cursor it opened with is the same point.
	f = watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: opened})
	feedStart(t, f)
	for _, w := range want {
		if got := feedRender(feedNext(t, f)); got != w {
			t.Fatalf("the feed from the cursor it opened with delivered %q, want %q", got, w)
		}
	}
}

// TestFeedPrefixes checks that a feed with prefixes carries only the ops
// on matching keys, skips commits with none, and always carries erases.
func TestFeedPrefixes(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start", Prefixes: []string{"a/", "c/x"}})
	feedStart(t, f)
	v1 := commit(t, b, "pre", opPut("a/1", "1"), opPut("b/1", "1"), opPut("c/y", "1"), opPut("c/x1", "1"))
	commit(t, b, "pre", opPut("b/2", "2"))
	v3 := commit(t, b, "pre", opDelete("a/1"), opAdd("c/x2", "e"))
	for _, want := range []string{
		fmt.Sprintf("user:pre@%d: PUT a/1=1, PUT c/x1=1", v1),
		fmt.Sprintf("user:pre@%d: DELETE a/1, LIST_ADD c/x2=e", v3),
	} {
		if got := feedRender(feedNext(t, f)); got != want {
			t.Fatalf("the feed with prefixes a/ and c/x delivered %q, want %q", got, want)
		}
	}
	// An erase touches every key: it always comes. (It drops the erased
	// partition's earlier records, so read them first.)
	commit(t, b, "pre", opPut("b/3", "3"))
	resp, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "pre"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := feedRender(feedNext(t, f)), fmt.Sprintf("user:pre@%d: ERASED", resp.Msg.GetVersion()); got != want {
		t.Fatalf("the feed with prefixes a/ and c/x delivered %q, want %q", got, want)
	}
	f = watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Prefixes: []string{"a/", ""}})
	wantError(t, f.end(t, streamWait), connect.CodeInvalidArgument, "empty prefix")
}

// TestFeedErase checks that DeletePartition shows in the feed as an event
// with erased set, and that the erased partition's earlier commits leave
// the feed with its data.
func TestFeedErase(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{})
	feedStart(t, f)
	v1 := commit(t, b, "gone", opPut("secret", "s"))
	vk := commit(t, b, "kept", opPut("k", "1"))
	resp, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "gone"}))
	if err != nil {
		t.Fatal(err)
	}
	erased := resp.Msg.GetVersion()
	if got, want := erased, v1+1; got != want {
		t.Fatalf("DeletePartition answered version %d, want %d", got, want)
	}
	for _, want := range []string{
		fmt.Sprintf("user:gone@%d: PUT secret=s", v1),
		fmt.Sprintf("user:kept@%d: PUT k=1", vk),
	} {
		if got := feedRender(feedNext(t, f)); got != want {
			t.Fatalf("feed delivered %q, want %q", got, want)
		}
	}
	ev := feedNext(t, f)
	if !ev.GetErased() || ev.GetUser() != "gone" || ev.GetShared() != "" || ev.GetVersion() != erased || len(ev.GetOps()) != 0 {
		t.Fatalf("after DeletePartition the feed delivered %v, want user gone erased at version %d with no ops", ev, erased)
	}
	after := commit(t, b, "gone", opPut("new", "n"))
	if got, want := feedRender(feedNext(t, f)), fmt.Sprintf("user:gone@%d: PUT new=n", after); got != want {
		t.Fatalf("after the erase the feed delivered %q, want %q", got, want)
	}

	// From the start, the erased commit's data is gone; the erase stays.
	f = watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	feedStart(t, f)
	for _, want := range []string{
		fmt.Sprintf("user:kept@%d: PUT k=1", vk),
		fmt.Sprintf("user:gone@%d: ERASED", erased),
		fmt.Sprintf("user:gone@%d: PUT new=n", after),
	} {
		if got := feedRender(feedNext(t, f)); got != want {
			t.Fatalf("the feed from start after the erase delivered %q, want %q", got, want)
		}
	}
}

// feedCompacted sums the feed records the server's log says compaction
// dropped.
var feedCompacted = regexp.MustCompile(`msg=compacted .*feed_records=(\d+)`)

// TestFeedBadCursors checks that a cursor the feed did not give is
// invalid_argument, one older than the retention horizon is out_of_range
// with a message that says so, and "start" then begins after the horizon.
func TestFeedBadCursors(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--retention", "2s")
	b := backendClient(t, srv)

	cursor := func(b ...byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	for _, bad := range []string{"not a cursor!", cursor(2, 0, 0, 0, 0, 0, 0, 0, 1), cursor(1, 7, 7), "start2"} {
		t.Run(bad, func(t *testing.T) {
			f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: bad})
			var err error
			for i := 0; err == nil; i++ {
				var ev *dalvv1.ChangeEvent
				if ev, err = f.next(t, streamWait); err == nil && (!ev.GetHeartbeat() || i > 0) {
					t.Fatalf("cursor %q: the feed sent %v, want invalid_argument", bad, ev)
				}
			}
			wantError(t, err, connect.CodeInvalidArgument, "cursor", "not one this feed gave")
		})
	}

	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	c0 := feedStart(t, f)
	var cs []string
	for i := range 3 {
		commit(t, b, "old", opPut("k", fmt.Sprint(i)))
		cs = append(cs, feedNext(t, f).GetCursor())
	}
	f.stop()
	wait.ForEvery(t, 20*time.Second, 100*time.Millisecond, func() error {
		n := 0
		for _, m := range feedCompacted.FindAllStringSubmatch(srv.Stderr(), -1) {
			k, _ := strconv.Atoi(m[1])
			n += k
		}
		if n < 3 {
			return fmt.Errorf("compaction dropped %d feed records, want 3", n)
		}
		return nil
	})
	for _, c := range []string{c0, cs[0], cs[1]} {
		f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: c})
		wantError(t, f.end(t, streamWait), connect.CodeOutOfRange, "older than the retention horizon", "start")
	}
	// "start" now begins after the compacted commits.
	f = watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	feedStart(t, f)
	v := commit(t, b, "old", opPut("k", "new"))
	if got, want := feedRender(feedNext(t, f)), fmt.Sprintf("user:old@%d: PUT k=new", v); got != want {
		t.Fatalf("the feed from start after compaction delivered %q, want %q", got, want)
	}
	// So does the last cursor: nothing after it was dropped.
	f = watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: cs[2]})
	feedStart(t, f)
	if got, want := feedRender(feedNext(t, f)), fmt.Sprintf("user:old@%d: PUT k=new", v); got != want {
		t.Fatalf("the feed from the last compacted cursor delivered %q, want %q", got, want)
	}

	// A wrong backend key is refused.
	c := dalvv1connect.NewBackendServiceClient(http.DefaultClient, srv.URL())
	bad := pumpStream(t, func(ctx context.Context) (*connect.ServerStreamForClient[dalvv1.ChangeEvent], error) {
		return c.Watch(ctx, authorized(&dalvv1.BackendServiceWatchRequest{}, "Bearer wrong-key-0123456789abcdef"))
	})
	wantError(t, bad.end(t, streamWait), connect.CodeUnauthenticated, "backend API key")
}

// TestStreamsEndOnSIGTERM checks that SIGTERM ends an open feed and an open
// device watch with unavailable and a message that says where to resume,
// and that the process then exits 0.
func TestStreamsEndOnSIGTERM(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	v := commit(t, backendClient(t, srv), "term", opPut("k", "v"))
	f := watchFeed(t, srv, &dalvv1.BackendServiceWatchRequest{Cursor: "start"})
	feedStart(t, f)
	if got := feedRender(feedNext(t, f)); got != fmt.Sprintf("user:term@%d: PUT k=v", v) {
		t.Fatalf("feed delivered %q", got)
	}
	w := watchDevice(t, srv, "term", &dalvv1.WatchRequest{DeviceId: "d"})
	if _, at := watchCatchUp(t, w); at != v {
		t.Fatalf("watch caught up to %d, want %d", at, v)
	}

	if err := syscall.Kill(srv.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wantError(t, f.end(t, 5*time.Second), connect.CodeUnavailable, "shutting down", "resume from cursor")
	wantError(t, w.end(t, 5*time.Second), connect.CodeUnavailable, "shutting down", fmt.Sprintf("resume from version %d", v))
	select {
	case <-srv.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("dalv serve still runs 10s after SIGTERM:\n%s", srv.Stderr())
	}
	if err := srv.ExitErr(); err != nil {
		t.Fatalf("dalv serve exited with %v after SIGTERM, want 0:\n%s", err, srv.Stderr())
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the streams and the process took %v to end after SIGTERM", took)
	}
}
