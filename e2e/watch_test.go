package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file holds the tests of the device Watch (the README's "Watch"): the catch-up
// collapsed as Sync collapses it, then live commits in version order, the
// prefix filter, resets, heartbeats and slow watchers. It also holds the
// stream helpers that feed_test.go, shared_test.go and cli_test.go share.

// streamWait bounds the wait for one stream message that should come.
const streamWait = 15 * time.Second

// streamPump reads a server stream in its own goroutine and hands each
// message over an unbuffered channel, so the test waits for the next one
// with a deadline and nothing is read ahead of the test.
type streamPump[T any] struct {
	msgs   chan *T
	done   chan struct{}
	err    error // why the stream ended, once done is closed; nil for a clean end
	cancel context.CancelFunc
}

// pumpStream opens a stream with open and pumps it until it ends or the
// test ends. stop (or the test's end) disconnects.
func pumpStream[T any](t testing.TB, open func(context.Context) (*connect.ServerStreamForClient[T], error)) *streamPump[T] {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	p := &streamPump[T]{msgs: make(chan *T), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(p.done)
		stream, err := open(ctx)
		if err != nil {
			p.err = err
			return
		}
		defer stream.Close()
		for stream.Receive() {
			select {
			case p.msgs <- stream.Msg():
			case <-ctx.Done():
				p.err = ctx.Err()
				return
			}
		}
		p.err = stream.Err()
	}()
	t.Cleanup(p.stop)
	return p
}

// stop disconnects and waits for the reader to finish.
func (p *streamPump[T]) stop() {
	p.cancel()
	<-p.done
}

// next returns the next message; or nil and why the stream ended (io.EOF
// for a clean end). It fails the test when neither comes within wait.
func (p *streamPump[T]) next(t testing.TB, wait time.Duration) (*T, error) {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case m := <-p.msgs:
		return m, nil
	case <-p.done:
		if p.err == nil {
			return nil, io.EOF
		}
		return nil, p.err
	case <-timer.C:
		t.Fatalf("no stream message in time (the wait left was %v)", wait)
		return nil, nil
	}
}

// must returns the next message, failing the test when the stream ended
// or nothing came within streamWait.
func (p *streamPump[T]) must(t testing.TB) *T {
	t.Helper()
	return p.mustBy(t, time.Now().Add(streamWait))
}

// mustBy is must with a deadline.
func (p *streamPump[T]) mustBy(t testing.TB, deadline time.Time) *T {
	t.Helper()
	m, err := p.next(t, time.Until(deadline))
	if err != nil {
		t.Fatalf("the stream ended: %v", err)
	}
	return m
}

// end waits for the stream to end and returns why, failing the test when a
// message comes instead.
func (p *streamPump[T]) end(t testing.TB, wait time.Duration) error {
	t.Helper()
	m, err := p.next(t, wait)
	if err == nil {
		t.Fatalf("got %v, want the stream to end", m)
	}
	return err
}

// authorized is msg as a request with the Authorization header set: the
// harness's bearer option covers unary calls only.
func authorized[T any](msg *T, authorization string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if authorization != "" {
		r.Header().Set("Authorization", authorization)
	}
	return r
}

// watchDeviceWith opens a device Watch over hc with authorization as its
// Authorization header ("" for none).
func watchDeviceWith(t testing.TB, hc *http.Client, srv *proc.Server, authorization string, req *dalvv1.WatchRequest) *streamPump[dalvv1.WatchEvent] {
	t.Helper()
	c := dalvv1connect.NewClientServiceClient(hc, srv.URL())
	return pumpStream(t, func(ctx context.Context) (*connect.ServerStreamForClient[dalvv1.WatchEvent], error) {
		return c.Watch(ctx, authorized(req, authorization))
	})
}

// watchDevice opens a device Watch with a token for user.
func watchDevice(t testing.TB, srv *proc.Server, user string, req *dalvv1.WatchRequest) *streamPump[dalvv1.WatchEvent] {
	t.Helper()
	return watchDeviceWith(t, http.DefaultClient, srv, "Bearer "+token(t, user), req)
}

// watchView is what a device following a watch holds: each key's change,
// rendered as render renders it.
type watchView struct {
	version uint64
	items   map[string]string // key -> "key=value@version"
	inReset bool
}

// apply applies one event as a device would: a reset that starts replaces
// everything, tombstones delete.
func (v *watchView) apply(ev *dalvv1.WatchEvent) {
	if v.items == nil || (ev.GetReset_() && !v.inReset) {
		v.items = map[string]string{}
	}
	v.inReset = ev.GetReset_() && ev.GetMore()
	for i, c := range ev.GetChanges() {
		if c.GetDeleted() {
			delete(v.items, c.GetKey())
			continue
		}
		v.items[c.GetKey()] = render(ev.GetChanges()[i : i+1])[0]
	}
	v.version = ev.GetVersion()
}

// partition renders v as readPartition does, in key order.
func (v *watchView) partition() partition {
	p := partition{version: v.version}
	keys := slices.Sorted(maps.Keys(v.items))
	for _, k := range keys {
		p.items = append(p.items, v.items[k])
	}
	return p
}

// watchCatchUp reads a watch's catch-up: the events before the heartbeat
// that ends it, and that heartbeat's version.
func watchCatchUp(t testing.TB, w *streamPump[dalvv1.WatchEvent]) ([]*dalvv1.WatchEvent, uint64) {
	t.Helper()
	var evs []*dalvv1.WatchEvent
	deadline := time.Now().Add(2 * streamWait)
	for {
		ev := w.mustBy(t, deadline)
		if ev.GetHeartbeat() {
			if len(ev.GetChanges()) > 0 || ev.GetReset_() {
				t.Fatalf("heartbeat %v carries changes or a reset", ev)
			}
			if len(evs) > 0 && evs[len(evs)-1].GetMore() {
				t.Fatalf("heartbeat after an event with more set: %v", evs[len(evs)-1])
			}
			return evs, ev.GetVersion()
		}
		evs = append(evs, ev)
		if len(evs) > 1000 {
			t.Fatal("catch-up of more than 1000 events")
		}
	}
}

// watchNext returns the next event that is not a heartbeat, failing the
// test when none comes within streamWait.
func watchNext(t testing.TB, w *streamPump[dalvv1.WatchEvent]) *dalvv1.WatchEvent {
	t.Helper()
	deadline := time.Now().Add(streamWait)
	for {
		if ev := w.mustBy(t, deadline); !ev.GetHeartbeat() {
			return ev
		}
	}
}

// setDiff returns the elements of a that are not in b, sorted.
func setDiff(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}

// sorted returns a sorted copy of s.
func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestWatchCatchUpThenLive checks that a watch that starts behind gets what
// it missed collapsed (one change per key, tombstones for deletes), then
// every commit of another device of the user and of a backend, each in its
// own event with its version, in version order, none missing or doubled;
// and that what it shows in the end is the server's state.
func TestWatchCatchUpThenLive(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "watch-live"
	b, dev := backendClient(t, srv), deviceClient(t, srv, user)

	v1 := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "A", Batch: 1, Ops: ops(opPut("a", "1"), opPut("b", "1"), opPut("gone", "1"), opPut("keep", "1"))}).GetVersion()
	v2 := commit(t, b, user, opPut("a", "2"))
	v3 := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "A", BaseVersion: v2, Batch: 2, Ops: ops(opDelete("gone"))}).GetVersion()
	v4 := commit(t, b, user, opPut("b", "2"), opAdd("l", "x"))
	v5 := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "A", BaseVersion: v4, Batch: 3, Ops: ops(opPut("a", "3"), opAdd("l", "y"))}).GetVersion()
	if v1 != 1 || v5 != 5 {
		t.Fatalf("history made versions %d..%d, want 1..5", v1, v5)
	}

	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W", FromVersion: v2})
	evs, at := watchCatchUp(t, w)
	if len(evs) != 1 {
		t.Fatalf("catch-up from %d: %d events, want 1: %v", v2, len(evs), evs)
	}
	ev := evs[0]
	if ev.GetReset_() || ev.GetMore() || ev.GetVersion() != v5 || at != v5 {
		t.Fatalf("catch-up event: version %d reset %v more %v, heartbeat at %d; want version %d, no reset, no more, heartbeat at %d", ev.GetVersion(), ev.GetReset_(), ev.GetMore(), at, v5, v5)
	}
	wantChanges := []string{
		fmt.Sprintf("gone=deleted@%d", v3), fmt.Sprintf("b=2@%d", v4),
		fmt.Sprintf("a=3@%d", v5), fmt.Sprintf("l=[x y]@%d", v5),
	}
	if got := render(ev.GetChanges()); !slices.Equal(sorted(got), sorted(wantChanges)) {
		t.Fatalf("catch-up changes from %d = %v, want one per key: %v", v2, got, wantChanges)
	}
	// Ordered as Sync orders the same answer.
	if got, want := render(ev.GetChanges()), render(pullAll(t, dev, "P", v2)[0].GetChanges()); !slices.Equal(got, want) {
		t.Fatalf("catch-up changes = %v, want what Sync from %d answers: %v", got, v2, want)
	}
	view := &watchView{}
	// The watch started at v2: seed it with the state at v2 as a device
	// would hold it, so the final comparison covers the catch-up too.
	view.apply(&dalvv1.WatchEvent{Version: v2, Changes: []*dalvv1.Change{
		{Key: "a", Value: scalar("2"), Version: v2}, {Key: "b", Value: scalar("1"), Version: v1},
		{Key: "gone", Value: scalar("1"), Version: v1}, {Key: "keep", Value: scalar("1"), Version: v1},
	}})
	view.apply(ev)

	// Live: another device of the user and a backend take turns. Device B
	// never conflicts: it writes keys of its own and merges list elements.
	type made struct {
		version uint64
		changes []string // sorted
	}
	var (
		history []made
		bBase   uint64
	)
	expect := func(version uint64, keys ...string) {
		resp, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: keys}))
		if err != nil {
			t.Fatal(err)
		}
		var cs []string
		for _, k := range keys {
			if c := keyIn(resp.Msg.GetItems(), k); c != nil {
				cs = append(cs, render([]*dalvv1.Change{c})[0])
			} else {
				cs = append(cs, fmt.Sprintf("%s=deleted@%d", k, version))
			}
		}
		history = append(history, made{version, sorted(cs)})
	}
	for i := range 20 {
		if i%2 == 0 {
			key := fmt.Sprintf("dev/%d", i)
			resp := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "B", BaseVersion: bBase, Batch: uint64(i/2 + 1), Ops: ops(opPut(key, fmt.Sprint(i)), opAdd("l", fmt.Sprint("b", i)))})
			if resp.GetStatus() != accepted {
				t.Fatalf("device B's sync %d: status %v", i, resp.GetStatus())
			}
			bBase = resp.GetVersion()
			expect(bBase, key, "l")
			continue
		}
		key := fmt.Sprintf("be/%d", i)
		o := ops(opPut(key, fmt.Sprint(i)))
		keys := []string{key}
		if i%4 == 3 {
			o = append(o, opDelete(fmt.Sprintf("dev/%d", i-3)), opRemove("l", fmt.Sprint("b", i-3)))
			keys = append(keys, fmt.Sprintf("dev/%d", i-3), "l")
		}
		expect(commit(t, b, user, o...), keys...)
	}
	for i, m := range history {
		if want := v5 + uint64(i) + 1; m.version != want {
			t.Fatalf("commit %d got version %d, want %d", i, m.version, want)
		}
		ev := watchNext(t, w)
		if ev.GetVersion() != m.version || ev.GetReset_() || ev.GetMore() {
			t.Fatalf("live event %d: version %d reset %v more %v, want version %d (events must come one per commit, in order)", i, ev.GetVersion(), ev.GetReset_(), ev.GetMore(), m.version)
		}
		if got := sorted(render(ev.GetChanges())); !slices.Equal(got, m.changes) {
			t.Fatalf("live event at version %d: changes %v, want %v", m.version, got, m.changes)
		}
		view.apply(ev)
	}
	wantPartition(t, b, user, view.partition())
	// Nothing more: the next event is a heartbeat or nothing; a commit now
	// comes next with the next version, so nothing was doubled.
	last := commit(t, b, user, opPut("final", "x"))
	if ev := watchNext(t, w); ev.GetVersion() != last {
		t.Fatalf("after the last commit %d the watch sent version %d", last, ev.GetVersion())
	}
}

// TestWatchConcurrentWriters checks that with devices and a backend
// committing at once, a watch sees every change exactly once with the
// version that made it, in increasing versions, ending at the server's
// state. Several commits may come in one event when they raced.
func TestWatchConcurrentWriters(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const (
		user    = "watch-race"
		writers = 8
		each    = 25
	)
	b := backendClient(t, srv)
	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W"})
	if evs, at := watchCatchUp(t, w); len(evs) != 0 || at != 0 {
		t.Fatalf("catch-up of an empty partition: %v, heartbeat at %d; want none at 0", evs, at)
	}

	var (
		mu   gosync.Mutex
		made = map[string]bool{} // "key@version"
		wg   gosync.WaitGroup
		errs = make(chan error, writers)
	)
	dev := deviceClient(t, srv, user)
	for g := range writers {
		wg.Go(func() {
			var base uint64
			for i := range each {
				key := fmt.Sprintf("w%d/%d", g, i)
				var version uint64
				if g%2 == 0 {
					resp, err := dev.Sync(context.Background(), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: fmt.Sprint("dev", g), BaseVersion: base, Batch: uint64(i + 1), Ops: ops(opPut(key, "v"))}))
					if err == nil && resp.Msg.GetStatus() != accepted {
						err = fmt.Errorf("status %v", resp.Msg.GetStatus())
					}
					if err != nil {
						errs <- fmt.Errorf("sync %s: %w", key, err)
						return
					}
					version, base = resp.Msg.GetVersion(), resp.Msg.GetVersion()
				} else {
					resp, err := b.Commit(context.Background(), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops(opPut(key, "v"))}))
					if err != nil {
						errs <- fmt.Errorf("commit %s: %w", key, err)
						return
					}
					version = resp.Msg.GetVersion()
				}
				mu.Lock()
				made[fmt.Sprintf("%s@%d", key, version)] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	seen := map[string]int{}
	var at uint64
	view := &watchView{}
	timeout := time.After(streamWait)
	for len(seen) < writers*each {
		var ev *dalvv1.WatchEvent
		select {
		case ev = <-w.msgs:
		case <-w.done:
			t.Fatalf("the watch ended: %v", w.err)
		case <-timeout:
			t.Fatalf("the watch is at version %d and sent nothing more for %v; it never sent %v", at, streamWait, unseen(made, seen))
		}
		if ev.GetHeartbeat() {
			continue
		}
		if ev.GetVersion() <= at || ev.GetReset_() {
			t.Fatalf("event at version %d (reset %v) after version %d: versions must increase", ev.GetVersion(), ev.GetReset_(), at)
		}
		at = ev.GetVersion()
		for _, c := range ev.GetChanges() {
			if c.GetVersion() > at {
				t.Fatalf("event at version %d carries a change of version %d", at, c.GetVersion())
			}
			kv := fmt.Sprintf("%s@%d", c.GetKey(), c.GetVersion())
			if !made[kv] {
				t.Fatalf("the watch sent %s, which no writer made", kv)
			}
			if seen[kv]++; seen[kv] > 1 {
				t.Fatalf("the watch sent %s twice", kv)
			}
		}
		view.apply(ev)
		if at == writers*each && len(seen) < writers*each {
			t.Fatalf("the watch reached the last version %d without sending %v", at, unseen(made, seen))
		}
	}
	if got, want := at, uint64(writers*each); got != want {
		t.Fatalf("the watch ended at version %d, want %d", got, want)
	}
	wantPartition(t, b, user, view.partition())
}

// unseen lists the changes made that were not seen, sorted.
func unseen(made map[string]bool, seen map[string]int) []string {
	var out []string
	for kv := range made {
		if seen[kv] == 0 {
			out = append(out, kv)
		}
	}
	slices.Sort(out)
	return out
}

// TestWatchPrefixes checks that a watch with prefixes gets only the
// matching keys, in the catch-up and live, and no event for a commit that
// touches none of them.
func TestWatchPrefixes(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "watch-prefix"
	b := backendClient(t, srv)
	commit(t, b, user, opPut("p/1", "a"), opPut("r/1", "a"), opPut("q/x1", "a"), opPut("q/y1", "a"))
	v2 := commit(t, b, user, opDelete("p/1"), opPut("r/2", "b"))

	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W", Prefixes: []string{"p/", "q/x"}})
	evs, at := watchCatchUp(t, w)
	if len(evs) != 1 || at != v2 {
		t.Fatalf("catch-up: %d events, heartbeat at %d; want 1 event, heartbeat at %d", len(evs), at, v2)
	}
	if got, want := sorted(render(evs[0].GetChanges())), []string{"p/1=deleted@2", "q/x1=a@1"}; !slices.Equal(got, want) {
		t.Fatalf("catch-up changes with prefixes p/ and q/x = %v, want %v", got, want)
	}

	commit(t, b, user, opPut("r/3", "c"), opPut("q/y2", "c")) // no match: no event
	v4 := commit(t, b, user, opPut("r/4", "d"), opPut("p/2", "d"), opPut("q/x2", "d"))
	ev := watchNext(t, w)
	if got, want := ev.GetVersion(), v4; got != want {
		t.Fatalf("first live event at version %d, want %d (the commit that touched no watched key sends nothing)", got, want)
	}
	if got, want := sorted(render(ev.GetChanges())), []string{fmt.Sprintf("p/2=d@%d", v4), fmt.Sprintf("q/x2=d@%d", v4)}; !slices.Equal(got, want) {
		t.Fatalf("live changes = %v, want %v", got, want)
	}
}

// TestWatchResetPastRetention checks that a watch from a version whose
// tombstones retention dropped starts with a reset (the whole partition, no
// tombstones), while one from the horizon does not.
func TestWatchResetPastRetention(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--retention", "2s")
	const user = "watch-retention"
	b, dev := backendClient(t, srv), deviceClient(t, srv, user)
	v1 := commit(t, b, user, opPut("a", "1"), opPut("t", "1"))
	commit(t, b, user, opPut("b", "2"))
	v3 := commit(t, b, user, opDelete("t"))
	wait.ForEvery(t, 20*time.Second, 100*time.Millisecond, func() error {
		if !mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "probe", BaseVersion: v1}).GetReset_() {
			return errors.New("the tombstone of t is not compacted yet")
		}
		return nil
	})

	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W", FromVersion: v1})
	evs, at := watchCatchUp(t, w)
	if len(evs) != 1 || at != v3 {
		t.Fatalf("catch-up from %d past retention: %d events, heartbeat at %d; want 1 event, heartbeat at %d", v1, len(evs), at, v3)
	}
	if ev := evs[0]; !ev.GetReset_() || ev.GetVersion() != v3 {
		t.Fatalf("catch-up from %d past retention: reset %v at version %d, want a reset at %d", v1, ev.GetReset_(), ev.GetVersion(), v3)
	}
	if got, want := render(evs[0].GetChanges()), []string{"a=1@1", "b=2@2"}; !slices.Equal(sorted(got), want) {
		t.Fatalf("reset changes = %v, want the whole partition %v", got, want)
	}
	v4 := commit(t, b, user, opPut("c", "4"))
	if ev := watchNext(t, w); ev.GetReset_() || ev.GetVersion() != v4 {
		t.Fatalf("after the reset, live event: reset %v version %d, want no reset at %d", ev.GetReset_(), ev.GetVersion(), v4)
	}

	// From the horizon nothing is missing: no reset.
	w = watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W2", FromVersion: v3})
	evs, at = watchCatchUp(t, w)
	if len(evs) != 1 || evs[0].GetReset_() || at != v4 {
		t.Fatalf("catch-up from the horizon %d: %v, heartbeat at %d; want one event without reset, at %d", v3, evs, at, v4)
	}
	if got, want := render(evs[0].GetChanges()), []string{"c=4@4"}; !slices.Equal(got, want) {
		t.Fatalf("catch-up from the horizon: %v, want %v", got, want)
	}
}

// TestWatchResetAfterDeletePartition checks that an open watch gets a
// reset when its partition is erased, then the commits after it; and that a
// watch from before the erase starts with a reset.
func TestWatchResetAfterDeletePartition(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "watch-erase"
	b := backendClient(t, srv)
	commit(t, b, user, opPut("a", "1"), opPut("b", "1"))
	v2 := commit(t, b, user, opPut("a", "2"))

	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W", FromVersion: v2})
	if evs, at := watchCatchUp(t, w); len(evs) != 0 || at != v2 {
		t.Fatalf("catch-up from the head: %v, heartbeat at %d; want nothing, at %d", evs, at, v2)
	}
	resp, err := b.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: user}))
	if err != nil {
		t.Fatal(err)
	}
	erased := resp.Msg.GetVersion()
	ev := watchNext(t, w)
	if !ev.GetReset_() || ev.GetVersion() != erased || len(ev.GetChanges()) != 0 {
		t.Fatalf("after DeletePartition: reset %v version %d changes %v; want a reset to nothing at %d", ev.GetReset_(), ev.GetVersion(), render(ev.GetChanges()), erased)
	}
	after := commit(t, b, user, opPut("c", "3"))
	ev = watchNext(t, w)
	if ev.GetReset_() || ev.GetVersion() != after {
		t.Fatalf("commit after the erase: reset %v version %d, want a plain event at %d", ev.GetReset_(), ev.GetVersion(), after)
	}
	if got, want := render(ev.GetChanges()), []string{fmt.Sprintf("c=3@%d", after)}; !slices.Equal(got, want) {
		t.Fatalf("commit after the erase: changes %v, want %v", got, want)
	}

	// A device that saw the partition before the erase starts over.
	w = watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W2", FromVersion: v2})
	evs, at := watchCatchUp(t, w)
	if len(evs) != 1 || !evs[0].GetReset_() || at != after {
		t.Fatalf("watch from %d, before the erase: %v, heartbeat at %d; want one reset, at %d", v2, evs, at, after)
	}
	if got, want := render(evs[0].GetChanges()), []string{fmt.Sprintf("c=3@%d", after)}; !slices.Equal(got, want) {
		t.Fatalf("reset after the erase: %v, want %v (no key from before the erase)", got, want)
	}
}

// TestWatchRefusals checks that a bad watch request ends the stream with a
// clear error before any event.
func TestWatchRefusals(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "watch-bad"
	commit(t, backendClient(t, srv), user, opPut("a", "1"))
	good := "Bearer " + token(t, user)
	for _, tc := range []struct {
		name          string
		authorization string
		req           *dalvv1.WatchRequest
		code          connect.Code
		words         []string
	}{
		{"missing device id", good, &dalvv1.WatchRequest{}, connect.CodeInvalidArgument, []string{"deviceId"}},
		{"empty prefix", good, &dalvv1.WatchRequest{DeviceId: "d", Prefixes: []string{"a", ""}}, connect.CodeInvalidArgument, []string{"empty prefix"}},
		{"bad token", "Bearer not.a.token", &dalvv1.WatchRequest{DeviceId: "d"}, connect.CodeUnauthenticated, nil},
		{"no token", "", &dalvv1.WatchRequest{DeviceId: "d"}, connect.CodeUnauthenticated, nil},
		{"forged token", "Bearer " + signWith(t, hs256, []byte("another-secret-0123456789abcdef0123"), map[string]any{"sub": user, "exp": time.Now().Add(time.Hour).Unix()}), &dalvv1.WatchRequest{DeviceId: "d"}, connect.CodeUnauthenticated, nil},
		{"from version ahead", good, &dalvv1.WatchRequest{DeviceId: "d", FromVersion: 2}, connect.CodeInvalidArgument, []string{"ahead", "version 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := watchDeviceWith(t, http.DefaultClient, srv, tc.authorization, tc.req)
			wantError(t, w.end(t, streamWait), tc.code, tc.words...)
		})
	}
}

// TestWatchHeartbeats checks that an idle watch gets heartbeats carrying
// its version, also when a commit it filters out moved it.
func TestWatchHeartbeats(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--heartbeat", "200ms")
	const user = "watch-heartbeat"
	b := backendClient(t, srv)
	v1 := commit(t, b, user, opPut("p/a", "1"))
	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W", FromVersion: v1, Prefixes: []string{"p/"}})
	if evs, at := watchCatchUp(t, w); len(evs) != 0 || at != v1 {
		t.Fatalf("catch-up from the head: %v, heartbeat at %d; want nothing, at %d", evs, at, v1)
	}
	beats := func(n int, version uint64) {
		t.Helper()
		start := time.Now()
		for i := range n {
			ev := w.must(t)
			if !ev.GetHeartbeat() || ev.GetVersion() != version || len(ev.GetChanges()) != 0 {
				t.Fatalf("idle event %d: %v, want a heartbeat at version %d", i, ev, version)
			}
		}
		// A heartbeat every 200ms: 3 take about 600ms, never the default 15s.
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("%d heartbeats took %v with --heartbeat 200ms", n, took)
		}
	}
	beats(3, v1)
	v2 := commit(t, b, user, opPut("r/x", "filtered out"))
	// Heartbeats at v1 sent before the commit may still be on their way;
	// then each carries v2.
	ev := w.must(t)
	for i := 0; ev.GetVersion() == v1 && ev.GetHeartbeat() && i < 20; i++ {
		ev = w.must(t)
	}
	if !ev.GetHeartbeat() || ev.GetVersion() != v2 {
		t.Fatalf("after a commit the prefix filters out: %v, want a heartbeat at version %d", ev, v2)
	}
	beats(2, v2)
}

// tcpSendBufferMax is the largest send buffer the kernel grows a TCP socket
// to (net.ipv4.tcp_wmem), or 4 MiB when it cannot be read.
func tcpSendBufferMax() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	if f := strings.Fields(string(b)); err == nil && len(f) == 3 {
		if n, err := strconv.Atoi(f[2]); err == nil {
			return n
		}
	}
	return 4 << 20
}

// smallReceiveBuffer is an HTTP client whose sockets keep a fixed receive
// buffer of n bytes, so a reader that stops reading stops the server's
// writes after a known amount.
func smallReceiveBuffer(n int) *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		})
		return errors.Join(err, serr)
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// valueDigest renders a change with its value's length and hash instead
// of its bytes.
func valueDigest(c *dalvv1.Change) string {
	sum := sha256.Sum256(c.GetValue().GetScalar())
	return fmt.Sprintf("%s=%d:%s@%d", c.GetKey(), len(c.GetValue().GetScalar()), hex.EncodeToString(sum[:6]), c.GetVersion())
}

var resumeFrom = regexp.MustCompile(`resume from version (\d+)`)

// TestWatchSlowWatcher checks that a watch that stops reading while
// commits pour in is ended with resource_exhausted once it falls more than
// --watch-buffer commits behind, naming the version to resume from, and
// that resuming from the last version received loses nothing.
func TestWatchSlowWatcher(t *testing.T) {
	t.Parallel()
	const (
		user      = "watch-slow"
		valueSize = 64 << 10
		rcvBuf    = 64 << 10
		buffer    = 4
	)
	// The server sends until the kernel buffers are full: the client's
	// receive buffer (fixed) and the server's send buffer (grown up to
	// tcp_wmem's max). Only then does the watch's own buffer of 4 fill.
	// Commit twice what that takes, and at least 200.
	need := (tcpSendBufferMax()+2*rcvBuf)/valueSize + buffer + 1
	n := max(200, 2*need)
	t.Logf("committing %d values of %d KiB (about %d fill the buffers)", n, valueSize>>10, need)
	srv := startServer(t, "--watch-buffer", fmt.Sprint(buffer))
	b := backendClient(t, srv)

	w := watchDeviceWith(t, smallReceiveBuffer(rcvBuf), srv, "Bearer "+token(t, user), &dalvv1.WatchRequest{DeviceId: "slow"})
	if evs, at := watchCatchUp(t, w); len(evs) != 0 || at != 0 {
		t.Fatalf("catch-up of an empty partition: %v at %d", evs, at)
	}
	// The watch is live; it reads nothing more while backends commit.
	var (
		wg   gosync.WaitGroup
		errs = make(chan error, 4)
	)
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < n; i += 4 {
				// Random bytes: gzip must not shrink them.
				val := make([]byte, valueSize)
				_, _ = rand.NewChaCha8([32]byte{byte(i), byte(i >> 8)}).Read(val)
				if _, err := b.Commit(context.Background(), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops(&dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: fmt.Sprintf("big/%04d", i), Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: val}}})})); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("commit: %v", err)
	}

	view := &watchView{}
	digests := map[string]string{}
	var last uint64
	var err error
	// Heartbeats (every 15s) keep a stuck watch open: bound the whole read.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the watch neither ended nor delivered all %d commits within 30s: stuck at version %d", n, last)
		}
		var ev *dalvv1.WatchEvent
		if ev, err = w.next(t, streamWait); err != nil {
			break
		}
		if ev.GetVersion() <= last && !ev.GetHeartbeat() {
			t.Fatalf("event at version %d after %d", ev.GetVersion(), last)
		}
		last = ev.GetVersion()
		if last >= uint64(n) {
			t.Fatalf("the watch received all %d commits: it was never ended as too slow", n)
		}
		view.apply(ev)
		for _, c := range ev.GetChanges() {
			digests[c.GetKey()] = valueDigest(c)
		}
	}
	wantError(t, err, connect.CodeResourceExhausted, "too slow")
	m := resumeFrom.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("the error %q names no version to resume from", err)
	}
	if got, want := m[1], fmt.Sprint(last); got != want {
		t.Fatalf("the error says resume from version %s, but the last event received was at version %s", got, want)
	}
	t.Logf("ended at version %d of %d: %v", last, n, err)

	// Resume from the last version received: every later commit arrives.
	w = watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "slow", FromVersion: last})
	evs, at := watchCatchUp(t, w)
	if at != uint64(n) {
		t.Fatalf("the resumed watch caught up to version %d, want %d", at, n)
	}
	for _, ev := range evs {
		if ev.GetReset_() {
			t.Fatalf("resuming from %d got a reset", last)
		}
		view.apply(ev)
		for _, c := range ev.GetChanges() {
			digests[c.GetKey()] = valueDigest(c)
		}
	}
	var got, want []string
	for _, d := range digests {
		got = append(got, d)
	}
	var token string
	for {
		resp, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: user, PageSize: 1000, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.Msg.GetItems() {
			want = append(want, valueDigest(c))
		}
		if token = resp.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if got, want := len(want), n; got != want {
		t.Fatalf("the server holds %d keys, want %d", got, want)
	}
	if missing, extra := setDiff(want, got), setDiff(got, want); len(missing)+len(extra) > 0 {
		t.Fatalf("the watch before and after resuming shows %d keys, the server %d: the watch lacks %v and has %v", len(got), len(want), missing, extra)
	}
	if got, want := view.version, uint64(n); got != want {
		t.Fatalf("the watch ended at version %d, want %d", got, want)
	}
}

// TestWatchNoOpCommit is the regression test of a device that stayed one
// version behind (found by client/TestConvergence): a batch whose ops change
// nothing (a LIST_REMOVE of an element the list does not hold) still takes a
// version, since the device's batch is recorded. Its Sync answer must give
// that version, and a watch of the whole partition must tell another
// device of it.
func TestWatchNoOpCommit(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "watch-noop"
	dev := deviceClient(t, srv, user)
	v1 := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "A", Batch: 1, Ops: ops(opAdd("l", "x"))}).GetVersion()
	w := watchDevice(t, srv, user, &dalvv1.WatchRequest{DeviceId: "W", FromVersion: v1})
	if _, at := watchCatchUp(t, w); at != v1 {
		t.Fatalf("catch-up ended at %d, want %d", at, v1)
	}
	noop := &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: "l", Value: scalar("absent")}
	resp := mustSync(t, dev, &dalvv1.SyncRequest{DeviceId: "A", BaseVersion: v1, Batch: 2, Ops: ops(noop)})
	if got := partitionVersion(t, backendClient(t, srv), user, ""); resp.GetVersion() != got || got != v1+1 {
		t.Fatalf("the no-op batch was answered with version %d; the partition is at %d, want %d", resp.GetVersion(), got, v1+1)
	}
	deadline := time.Now().Add(streamWait)
	for {
		ev := w.mustBy(t, deadline)
		if ev.GetVersion() == v1+1 && !ev.GetHeartbeat() {
			return
		}
		if ev.GetVersion() > v1+1 {
			t.Fatalf("the watch went on to version %d without an event of version %d", ev.GetVersion(), v1+1)
		}
	}
}
