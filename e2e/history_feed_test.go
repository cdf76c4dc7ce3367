package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
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
