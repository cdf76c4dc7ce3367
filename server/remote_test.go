package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// fakeNotifier counts the sessions of Notifications and, unless mute,
// tells each it listens as it starts. It announces nothing.
type fakeNotifier struct {
	mute bool

	mu       sync.Mutex
	sessions int // started
	running  int // not yet returned
}

func (f *fakeNotifier) Notifications(ctx context.Context, _ func(store.Announcement), listening func()) error {
	f.mu.Lock()
	f.sessions++
	f.running++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.running--
		f.mu.Unlock()
	}()
	if !f.mute {
		listening()
	}
	<-ctx.Done()
	return nil
}

func (f *fakeNotifier) counts() (sessions, running int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions, f.running
}

func newTestRemote(f *fakeNotifier, linger, wait time.Duration) *remoteCommits {
	r := newRemoteCommits(f, slog.New(slog.DiscardHandler), func(store.Announcement) {})
	r.linger, r.wait = linger, wait
	return r
}

// TestRemoteListensWhileHeld checks that the listener starts with the
// first hold, is shared by the holds after it, outlives the last release by
// the linger, and starts again with the next hold.
func TestRemoteListensWhileHeld(t *testing.T) {
	t.Parallel()
	f := &fakeNotifier{}
	r := newTestRemote(f, 20*time.Millisecond, time.Minute) // a hold that waited the minute would fail the test's deadline
	defer r.stop()
	if r.listening() {
		t.Fatal("listening before any hold")
	}
	release1 := r.hold(context.Background())
	release2 := r.hold(context.Background())
	if sessions, running := f.counts(); sessions != 1 || running != 1 {
		t.Fatalf("after two holds: %d sessions started, %d running; want 1 and 1", sessions, running)
	}
	release1()
	release1() // a second call is a no-op, not another release
	if !r.listening() {
		t.Fatal("stopped listening while a hold remains")
	}
	release2()
	wait.For(t, 10*time.Second, func() error {
		if _, running := f.counts(); running != 0 || r.listening() {
			return errors.New("still listening after the last release and the linger")
		}
		return nil
	})
	release := r.hold(context.Background())
	defer release()
	if sessions, running := f.counts(); sessions != 2 || running != 1 {
		t.Fatalf("after a hold past the linger: %d sessions started, %d running; want 2 and 1", sessions, running)
	}
}

// TestRemoteHoldWithinLinger checks that a hold within the linger keeps
// the session that runs instead of starting another.
func TestRemoteHoldWithinLinger(t *testing.T) {
	t.Parallel()
	f := &fakeNotifier{}
	r := newTestRemote(f, time.Hour, time.Minute)
	r.hold(context.Background())()
	r.hold(context.Background())()
	if sessions, running := f.counts(); sessions != 1 || running != 1 {
		t.Fatalf("%d sessions started, %d running; want 1 and 1", sessions, running)
	}
	r.stop()
	if _, running := f.counts(); running != 0 || r.listening() {
		t.Fatalf("%d sessions running after stop, want 0", running)
	}
}

// TestRemoteHoldWaitsForListening checks that a hold returns only once
// the store listens, or after the wait when it does not.
func TestRemoteHoldWaitsForListening(t *testing.T) {
	t.Parallel()
	const waitFor = 100 * time.Millisecond
	r := newTestRemote(&fakeNotifier{mute: true}, time.Hour, waitFor)
	defer r.stop()
	start := time.Now()
	r.hold(context.Background())()
	if took := time.Since(start); took < waitFor {
		t.Errorf("a hold on a store that never listens returned after %v, want at least %v", took, waitFor)
	}
	// A caller that goes away stops waiting.
	r.wait = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r.hold(ctx)()
}

// announcingStore is a store shared, as far as the server can tell, with
// other processes: its Notifications pass on what the test announces. It
// counts the Views the server opens.
type announcingStore struct {
	store.Store
	announce chan store.Announcement
	views    atomic.Int64
}

func (s *announcingStore) View(ctx context.Context, p store.Partition, fn func(store.Reader) error) error {
	s.views.Add(1)
	return s.Store.View(ctx, p, fn)
}

func (s *announcingStore) Notifications(ctx context.Context, fn func(store.Announcement), listening func()) error {
	listening()
	for {
		select {
		case <-ctx.Done():
			return nil
		case a := <-s.announce:
			fn(a)
		}
	}
}

// TestWatchTakesCarriedCommit checks that a watch delivers the changes an
// announcement of another process's commit carries without reading the
// store, and that it reads the store for one announced by version alone.
// The commits exist only in the announcements, so a watch that read the
// store could not deliver them.
func TestWatchTakesCarriedCommit(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	st := &announcingStore{Store: cfg.Store, announce: make(chan store.Announcement)}
	cfg.Store = st
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	client := dalvv1connect.NewClientServiceClient(hs.Client(), hs.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "d"})
	req.Header().Set("Authorization", "Bearer "+token(t, "alice"))
	stream, err := client.Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || !stream.Msg().GetHeartbeat() {
		t.Fatalf("the watch did not start with a heartbeat: %v %v", stream.Msg(), stream.Err())
	}
	views := st.views.Load()
	alice := store.Partition{Name: "alice"}
	val := value.Scalar([]byte("blue"))
	st.announce <- store.Announcement{Partition: alice, Version: 1, Carried: true, Entries: []store.Entry{
		{Key: "colour", Value: value.Encode(nil, val), Version: 1, ScalarVersion: 1},
		{Key: "size", Deleted: true, Version: 1, ScalarVersion: 1},
	}}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	want := &dalvv1.WatchEvent{Version: 1, Changes: []*dalvv1.Change{
		{Key: "colour", Value: val, Version: 1},
		{Key: "size", Deleted: true, Version: 1},
	}}
	if got := stream.Msg(); !proto.Equal(got, want) {
		t.Errorf("the watch sent %v, want %v", got, want)
	}
	if n := st.views.Load() - views; n != 0 {
		t.Errorf("the watch read the store %d times for a carried commit", n)
	}
	st.announce <- store.Announcement{Partition: alice, Version: 2}
	wait.For(t, 10*time.Second, func() error {
		if st.views.Load() == views {
			return errors.New("the watch has not read the store for a commit announced by version")
		}
		return nil
	})
}

// gatedStore is a store whose Views, once block is set, wait for release;
// it counts them.
type gatedStore struct {
	store.Store
	block   atomic.Bool
	release chan struct{}
	views   atomic.Int64
}

func (s *gatedStore) View(ctx context.Context, p store.Partition, fn func(store.Reader) error) error {
	s.views.Add(1)
	if s.block.Load() {
		<-s.release
	}
	return s.Store.View(ctx, p, fn)
}

// doneSignal is a context that tells when something first waits on it.
type doneSignal struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (c *doneSignal) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

// TestSharedPull checks that watches asking for the same page after the
// same commit share one read; that the read outlives the caller that began
// it, so the others still get its page; and that a page after another
// commit is a read of its own.
func TestSharedPull(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	st := &gatedStore{Store: cfg.Store, release: make(chan struct{})}
	cfg.Store = st
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	alice := store.Partition{Name: "alice"}
	st.block.Store(true)

	type answer struct {
		page *dalvv1.SyncResponse
		err  error
	}
	first, firstCtx := make(chan answer, 1), context.Background()
	firstCtx, cancelFirst := context.WithCancel(firstCtx)
	go func() {
		page, err := s.sharedPull(firstCtx, 1, alice, 0, 0, 0)
		first <- answer{page, err}
	}()
	wait.For(t, 10*time.Second, func() error {
		if st.views.Load() != 1 {
			return errors.New("the first read has not begun")
		}
		return nil
	})
	joiner := &doneSignal{Context: context.Background(), waiting: make(chan struct{})}
	second := make(chan answer, 1)
	go func() {
		page, err := s.sharedPull(joiner, 1, alice, 0, 0, 0)
		second <- answer{page, err}
	}()
	select {
	case <-joiner.waiting: // it waits for a read: the first's, or one of its own
	case <-time.After(10 * time.Second):
		t.Fatal("the second caller never waited")
	}
	cancelFirst()
	if a := <-first; !errors.Is(a.err, context.Canceled) {
		t.Errorf("the first caller, its context cancelled, got %v, %v", a.page, a.err)
	}
	close(st.release)
	a := <-second
	if a.err != nil || a.page == nil {
		t.Fatalf("the caller that joined got %v, %v; want the page of the read begun before it", a.page, a.err)
	}
	if n := st.views.Load(); n != 1 {
		t.Errorf("%d reads for one page after one commit, want 1", n)
	}
	if _, err := s.sharedPull(context.Background(), 2, alice, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if n := st.views.Load(); n != 2 {
		t.Errorf("%d reads after a second commit's page, want 2", n)
	}
}
