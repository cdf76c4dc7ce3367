package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/dalvdb/dalv/store"
)

// testConcurrentUpdatesSerialised has goroutines read-modify-write one
// counter, all at once: any lost update or reused version shows.
func testConcurrentUpdatesSerialised(t *testing.T, s store.Store) {
	p := user("alice")
	const goroutines, each = 25, 8
	const n = goroutines * each
	versions := make([]uint64, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			<-start
			for j := range each {
				i := g*each + j
				if err := increment(s, p, i, &versions[i]); err != nil {
					t.Errorf("Update %d: %v", i, err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if got, want := get(t, s, p, "counter"), fmt.Sprintf("counter@%d=%d", n, n); got != want {
		t.Errorf("Get(counter) = %s, want %s", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: n}); got != want {
		t.Errorf("Head() = %+v, want %+v", got, want)
	}
	slices.Sort(versions)
	for i, v := range versions {
		if v != uint64(i+1) {
			t.Fatalf("committed versions = %v, want 1..%d each once", versions, n)
		}
	}
	if got, want := len(changes(t, s, p, 0)), n+1; got != want {
		t.Errorf("Changes(0) = %d entries, want %d", got, want)
	}
}

// increment adds one to p's counter in one commit that also writes a key of
// its own, i, and stores the version committed in version.
func increment(s store.Store, p store.Partition, i int, version *uint64) error {
	return s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		e, ok, err := r.Get("counter")
		if err != nil {
			return nil, err
		}
		if ok && e.Version > h.Version {
			// The lock covers the partition's first Update too: what fn
			// reads is the state at its head.
			return nil, fmt.Errorf("read counter of version %d under a head of version %d", e.Version, h.Version)
		}
		count := 0
		if ok {
			if count, err = strconv.Atoi(string(e.Value)); err != nil {
				return nil, err
			}
		}
		v := h.Version + 1
		*version = v // the last call's, if the store retries fn
		return &store.Commit{Version: v, Time: base, Entries: []store.Entry{
			{Key: "counter", Value: []byte(strconv.Itoa(count + 1)), Version: v, ScalarVersion: v},
			{Key: fmt.Sprintf("by/%03d", i), Value: []byte("x"), Version: v, ScalarVersion: v},
		}}, nil
	})
}

func testManyPartitionsParallel(t *testing.T, s store.Store) {
	const parts, writers, commits = 20, 3, 10
	var wg sync.WaitGroup
	for i := range parts {
		p := user(fmt.Sprintf("user%02d", i))
		for w := range writers {
			wg.Go(func() {
				for c := range commits {
					e := put(fmt.Sprintf("w%d", w), strconv.Itoa(c))
					if _, err := tryCommit(s, p, store.Commit{Entries: []store.Entry{e}, Device: fmt.Sprintf("d%d", w), Batch: uint64(c + 1)}); err != nil {
						t.Errorf("commit to %s: %v", p, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	for i := range parts {
		p := user(fmt.Sprintf("user%02d", i))
		if got, want := head(t, s, p), (store.Head{Version: writers * commits}); got != want {
			t.Errorf("%s Head() = %+v, want %+v", p, got, want)
		}
		for w := range writers {
			e, want := get(t, s, p, fmt.Sprintf("w%d", w)), fmt.Sprintf("=%d", commits-1)
			if len(e) < len(want) || e[len(e)-len(want):] != want {
				t.Errorf("%s Get(w%d) = %s, want value %d", p, w, e, commits-1)
			}
			if got, want := deviceBatch(t, s, p, fmt.Sprintf("d%d", w)), uint64(commits); got != want {
				t.Errorf("%s DeviceBatch(d%d) = %d, want %d", p, w, got, want)
			}
		}
	}
}

// testViewConsistentDuringUpdates reads while a writer commits: every
// commit writes keys a and b with its version, rewrites or deletes c, so a
// View that mixes two commits shows.
func testViewConsistentDuringUpdates(t *testing.T, s store.Store) {
	p := user("alice")
	const commits = 200
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := range commits {
			v := strconv.Itoa(i + 1)
			c := put("c", v)
			if i%2 == 1 {
				c = del("c")
			}
			if _, err := tryCommit(s, p, store.Commit{Entries: []store.Entry{put("a", v), put("b", v), c}}); err != nil {
				t.Errorf("commit: %v", err)
				return
			}
		}
	})
	for range 2 {
		wg.Go(func() {
			for finished := false; !finished; {
				select {
				case <-done:
					finished = true // one more View after the last commit
				default:
				}
				if err := s.View(context.Background(), p, checkConsistentView); err != nil {
					t.Errorf("View: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// checkConsistentView checks that one View of testViewConsistentDuringUpdates
// sees one commit's state through every method.
func checkConsistentView(r store.Reader) error {
	h, err := r.Head()
	if err != nil || h.Version == 0 {
		return err
	}
	want := strconv.FormatUint(h.Version, 10)
	for _, key := range []string{"a", "b"} {
		e, ok, err := r.Get(key)
		if err != nil {
			return err
		}
		if got := showOK(e, ok); got != key+"@"+want+"="+want {
			return fmt.Errorf("at head %d: Get(%s) = %s", h.Version, key, got)
		}
	}
	es, err := collect(func(fn func(store.Entry) (bool, error)) error { return r.Changes(0, fn) })
	if err != nil {
		return err
	}
	c := "c@" + want + "=" + want
	if h.Version%2 == 0 {
		c = "c@" + want + "(del)"
	}
	if got, want := shows(es), fmt.Sprintf("a@%[1]s=%[1]s b@%[1]s=%[1]s %[2]s", want, c); got != want {
		return fmt.Errorf("at head %d: Changes(0) = %s, want %s", h.Version, got, want)
	}
	live, err := collect(func(fn func(store.Entry) (bool, error)) error { return r.Scan("", "", fn) })
	if err != nil {
		return err
	}
	wantLive := 3 // c is live after odd versions
	if h.Version%2 == 0 {
		wantLive = 2
	}
	if got, want := len(live), wantLive; got != want {
		return fmt.Errorf("at head %d: Scan = %s, want %d entries", h.Version, shows(live), want)
	}
	if h2, err := r.Head(); err != nil || h2 != h {
		return fmt.Errorf("Head() moved from %+v to %+v (%v) within one View", h, h2, err)
	}
	return nil
}

// testCloseWaitsForUpdate closes the store while an Update is inside fn: the
// Update still commits.
func testCloseWaitsForUpdate(t *testing.T, s store.Store) {
	p := user("alice")
	entered, release, updated := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var updateErr error
	go func() {
		defer close(updated)
		updateErr = s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
			close(entered)
			<-release
			return &store.Commit{Version: 1, Time: base, Entries: []store.Entry{{Key: "a", Value: []byte("1"), Version: 1, ScalarVersion: 1}}}, nil
		})
	}()
	waitFor(t, entered, "fn to start")
	closed := make(chan struct{})
	var closeErr error
	go func() {
		defer close(closed)
		closeErr = s.Close()
	}()
	close(release)
	waitFor(t, updated, "Update to return")
	waitFor(t, closed, "Close to return")
	if updateErr != nil {
		t.Errorf("Update in flight at Close = %v, want nil", updateErr)
	}
	if closeErr != nil {
		t.Errorf("Close() = %v", closeErr)
	}
}

func testClosed(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "1")}})
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	called := false
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		called = true
		return nil, nil
	})
	if !errors.Is(err, store.ErrClosed) || called {
		t.Errorf("Update after Close = %v (fn called: %v), want %v", err, called, store.ErrClosed)
	}
	err = s.View(context.Background(), p, func(r store.Reader) error {
		called = true
		return nil
	})
	if !errors.Is(err, store.ErrClosed) || called {
		t.Errorf("View after Close = %v (fn called: %v), want %v", err, called, store.ErrClosed)
	}
	if _, err := s.Compact(context.Background(), base); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Compact after Close = %v, want %v", err, store.ErrClosed)
	}
	err = s.Feed(context.Background(), "", func(store.FeedRecord) (bool, error) {
		called = true
		return true, nil
	})
	if !errors.Is(err, store.ErrClosed) || called {
		t.Errorf("Feed after Close = %v (fn called: %v), want %v", err, called, store.ErrClosed)
	}
	if _, _, err := s.FeedBounds(context.Background()); !errors.Is(err, store.ErrClosed) {
		t.Errorf("FeedBounds after Close = %v, want %v", err, store.ErrClosed)
	}
}
