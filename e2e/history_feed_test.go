package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// feedEvent is one commit the change feed delivered, with the cursor that
// resumes after it.
type feedEvent struct {
	part    string
	version uint64
	cursor  string
}

// feedReader follows the change feed of a node from a cursor, as a backend
// does: when the stream breaks (the node lost its database, a cut), it
// opens it again from the last cursor it was given.
type feedReader struct {
	mu     sync.Mutex
	events []feedEvent
	breaks int
}

// follow reads from cursor until ctx ends.
func (f *feedReader) follow(ctx context.Context, srv *proc.Server, cursor string) {
	c := dalvv1connect.NewBackendServiceClient(http.DefaultClient, srv.URL())
	var backoff time.Duration
	for ctx.Err() == nil {
		st, err := c.Watch(ctx, authorized(&dalvv1.BackendServiceWatchRequest{Cursor: cursor}, "Bearer "+testBackendKey))
		if err == nil {
			for st.Receive() {
				ev := st.Msg()
				cursor = ev.GetCursor()
				if ev.GetHeartbeat() {
					continue
				}
				f.mu.Lock()
				f.events = append(f.events, feedEvent{feedPart(ev), ev.GetVersion(), cursor})
				f.mu.Unlock()
				backoff = 0
			}
			st.Close()
		}
		if ctx.Err() != nil {
			return
		}
		f.mu.Lock()
		f.breaks++
		f.mu.Unlock()
		backoff = retryAfter(backoff)
		time.Sleep(backoff) // a backend backs off before it opens the feed again
	}
}

// snapshot returns the events so far.
func (f *feedReader) snapshot() ([]feedEvent, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]feedEvent(nil), f.events...), f.breaks
}

// checkFeed checks events, read from a cursor after which each partition
// was at version from[part], against each partition's final version: each
// partition's versions come in order, each at least once, none skipped; a
// repeat is of a version already delivered (recognisable by it).
func checkFeed(events []feedEvent, from, final map[string]uint64) error {
	last := maps.Clone(from)
	for i, ev := range events {
		switch l := last[ev.part]; {
		case ev.version == l+1:
			last[ev.part] = ev.version
		case ev.version <= l:
			// a repeat after a resume: recognisable by its version
		default:
			return fmt.Errorf("event %d: %s version %d after version %d: the feed skipped %d", i, ev.part, ev.version, l, ev.version-l-1)
		}
	}
	for part, v := range final {
		if last[part] != v {
			return fmt.Errorf("%s: the feed delivered up to version %d, the partition is at %d", part, last[part], v)
		}
	}
	return nil
}

// feedUpTo waits until f, reading from a cursor after which each partition
// was at version from[part], has delivered every partition up to final.
func feedUpTo(t *testing.T, f *feedReader, from, final map[string]uint64) {
	t.Helper()
	wait.For(t, time.Minute, func() error {
		events, _ := f.snapshot()
		got := maps.Clone(from)
		for _, ev := range events {
			got[ev.part] = max(got[ev.part], ev.version)
		}
		for part, v := range final {
			if got[part] < v {
				return fmt.Errorf("the feed has %s up to version %d of %d", part, got[part], v)
			}
		}
		return nil
	})
}

// checkFeeds checks what the live reader got, then reads the feed again
// from cursors it was given (its first, one from the middle, one near the
// end) on every node and checks those readings the same way, from there on.
func checkFeeds(t *testing.T, nodes []*proc.Server, live *feedReader, final map[string]uint64) string {
	t.Helper()
	none := map[string]uint64{}
	feedUpTo(t, live, none, final)
	events, breaks := live.snapshot()
	if err := checkFeed(events, none, final); err != nil {
		t.Errorf("the live feed reader (resumed %d times): %v", breaks, err)
		return ""
	}
	resumed := 0
	for _, at := range []int{0, len(events) / 2, len(events) - 2} {
		if at < 0 || at >= len(events) {
			continue
		}
		before := map[string]uint64{}
		for _, ev := range events[:at+1] {
			before[ev.part] = max(before[ev.part], ev.version)
		}
		for _, srv := range nodes {
			ctx, cancel := context.WithCancel(context.Background())
			f := &feedReader{}
			done := make(chan struct{})
			go func() { defer close(done); f.follow(ctx, srv, events[at].cursor) }()
			feedUpTo(t, f, before, final)
			cancel()
			<-done
			again, _ := f.snapshot()
			// From the cursor on, each partition goes on from at most
			// the version it had reached, with no gap.
			if err := checkFeed(again, before, final); err != nil {
				t.Errorf("the feed read again from cursor %d of %d on %s: %v", at+1, len(events), srv.Addr, err)
			}
			resumed++
		}
	}
	return fmt.Sprintf("feed: %d events in order with no gap (the reader resumed %d times), read again from %d cursors", len(events), breaks, resumed)
}

// errNoPartition is a partition the backend cannot read.
var errNoPartition = errors.New("no version")

// finalVersions reads each partition's version once the load has ended.
func finalVersions(t *testing.T, srv *proc.Server, users []string) map[string]uint64 {
	t.Helper()
	b := backendClient(t, srv)
	final := map[string]uint64{}
	for _, u := range users {
		wait.For(t, time.Minute, func() error {
			resp, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: u, Keys: historyKeys}))
			if err != nil {
				return err
			}
			if resp.Msg.GetVersion() == 0 {
				return errNoPartition
			}
			final["user:"+u] = resp.Msg.GetVersion()
			return nil
		})
	}
	return final
}

// watchReader follows one user's partition with a device's Watch, as a
// device does: it exposes the state a catch-up builds only once the
// catch-up is whole (more unset), and when the stream breaks it watches
// again from the last version it exposed. It keeps the partition's keys as
// the events leave them, rendered as the history model shows values.
type watchReader struct {
	mu      sync.Mutex
	version uint64            // the last version exposed
	state   map[string]string // the keys at version
	events  int
	breaks  int
	err     error // the first event that could not follow the one before
	lastErr error // what ended the last stream
}

// follow watches through c as device until ctx ends.
func (w *watchReader) follow(ctx context.Context, c dalvv1connect.ClientServiceClient, device string) {
	var backoff time.Duration
	for ctx.Err() == nil {
		w.mu.Lock()
		from := w.version
		w.mu.Unlock()
		st, err := c.Watch(ctx, connect.NewRequest(&dalvv1.WatchRequest{DeviceId: device, FromVersion: from}))
		if err == nil {
			var next map[string]string // a catch-up's state until it is whole
			for st.Receive() {
				if ev := st.Msg(); !ev.GetHeartbeat() {
					next = w.apply(ev, next)
					backoff = 0
				}
			}
			err = st.Err()
			st.Close()
		}
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.lastErr = err
		w.breaks++
		w.mu.Unlock()
		backoff = retryAfter(backoff)
		time.Sleep(backoff) // a device backs off before it watches again
	}
}

// apply takes one event into next, the state being built (nil when none
// is), and exposes it when the event ends a catch-up; it returns what is
// being built after the event.
func (w *watchReader) apply(ev *dalvv1.WatchEvent, next map[string]string) map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	if next == nil {
		next = maps.Clone(w.state)
		if next == nil {
			next = map[string]string{}
		}
	}
	if ev.GetReset_() {
		next = map[string]string{}
	}
	for _, c := range ev.GetChanges() {
		if c.GetDeleted() || c.GetValue() == nil {
			delete(next, c.GetKey())
		} else {
			next[c.GetKey()] = historyValue(c.GetValue())
		}
	}
	if ev.GetMore() {
		return next
	}
	if v := ev.GetVersion(); w.err == nil && (v < w.version || v == w.version && len(ev.GetChanges()) > 0) {
		w.err = fmt.Errorf("event %d: version %d with %d changes after version %d", w.events, v, len(ev.GetChanges()), w.version)
	}
	w.version, w.state = ev.GetVersion(), next
	return nil
}

// checkWatch waits until w has exposed version and checks what it holds
// then against the partition's keys, read through srv.
func checkWatch(t *testing.T, w *watchReader, srv *proc.Server, user string, version uint64) {
	t.Helper()
	wait.For(t, time.Minute, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.err != nil || w.version >= version {
			return nil
		}
		return fmt.Errorf("%s's watch is at version %d of %d (resumed %d times, last after %v)", user, w.version, version, w.breaks, w.lastErr)
	})
	// One key per get, so that each answer fits however small the
	// server's answers are; no call writes any more, so each reads the
	// same version.
	want, got := map[string]string{}, uint64(0)
	bc := backendClient(t, srv)
	for _, k := range append(slices.Clone(historyKeys), historyLists...) {
		resp, err := bc.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: []string{k}}))
		if err != nil {
			t.Fatal(err)
		}
		got = resp.Msg.GetVersion()
		for _, it := range resp.Msg.GetItems() {
			if !it.GetDeleted() && it.GetValue() != nil {
				want[it.GetKey()] = historyValue(it.GetValue())
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		t.Errorf("%s's watch (resumed %d times): %v", user, w.breaks, w.err)
	case w.version != version || got != version:
		t.Errorf("%s's watch is at version %d, the partition at %d, want %d", user, w.version, got, version)
	case !maps.Equal(w.state, want):
		t.Errorf("%s's watch (resumed %d times) holds %v at version %d, the partition %v", user, w.breaks, w.state, version, want)
	}
}
