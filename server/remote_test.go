package server

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/store"
)

// fakeNotifier counts the sessions of Notifications and, unless mute,
// tells each it listens as it starts. It announces nothing.
type fakeNotifier struct {
	mute bool

	mu       sync.Mutex
	sessions int // started
	running  int // not yet returned
}

func (f *fakeNotifier) Notifications(ctx context.Context, _ func(store.Partition, uint64), listening func()) error {
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
	r := newRemoteCommits(f, slog.New(slog.DiscardHandler), func(store.Partition, uint64) {})
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
