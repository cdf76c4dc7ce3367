package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/store"
)

// minute returns the time n minutes after base.
func minute(n int) time.Time { return base.Add(time.Duration(n) * time.Minute) }

func compact(t *testing.T, s store.Store, cutoff time.Time) store.CompactStats {
	t.Helper()
	st, err := s.Compact(context.Background(), cutoff)
	if err != nil {
		t.Fatalf("Compact(%v): %v", cutoff, err)
	}
	return st
}

func testCompactTombstones(t *testing.T, s store.Store) {
	p, q, idle := user("alice"), user("bob"), user("carol")
	commit(t, s, p, store.Commit{Time: minute(0), Entries: []store.Entry{put("a", "1"), put("b", "1"), put("c", "1"), put("d", "1")}})
	commit(t, s, p, store.Commit{Time: minute(1), Entries: []store.Entry{del("a")}})
	commit(t, s, p, store.Commit{Time: minute(2), Entries: []store.Entry{del("b")}})
	commit(t, s, q, store.Commit{Time: minute(0), Entries: []store.Entry{put("x", "1"), del("y")}})
	commit(t, s, idle, store.Commit{Time: minute(0), Entries: []store.Entry{put("x", "1")}})
	commit(t, s, p, store.Commit{Time: minute(4), Entries: []store.Entry{del("c")}})
	commit(t, s, q, store.Commit{Time: minute(5), Entries: []store.Entry{put("z", "2")}})

	if got, want := compact(t, s, minute(3)), (store.CompactStats{Tombstones: 3, FeedRecords: 5}); got != want {
		t.Errorf("Compact(minute 3) = %+v, want %+v", got, want)
	}
	for _, tc := range []struct {
		p    store.Partition
		head store.Head
		all  string
	}{
		{p, store.Head{Version: 4, Horizon: 3}, "d@1=1 c@4(del)"},
		{q, store.Head{Version: 2, Horizon: 1}, "x@1=1 z@2=2"},
		{idle, store.Head{Version: 1}, "x@1=1"},
	} {
		if got := head(t, s, tc.p); got != tc.head {
			t.Errorf("%s Head() = %+v, want %+v", tc.p, got, tc.head)
		}
		if got := shows(changes(t, s, tc.p, 0)); got != tc.all {
			t.Errorf("%s Changes(0) = %s, want %s", tc.p, got, tc.all)
		}
	}
	for key, want := range map[string]string{"a": "none", "b": "none", "c": "c@4(del)", "d": "d@1=1"} {
		if got := get(t, s, p, key); got != want {
			t.Errorf("Get(%q) = %s, want %s", key, got, want)
		}
	}
	if got, want := shows(changes(t, s, p, 3)), "c@4(del)"; got != want {
		t.Errorf("Changes(3) = %s, want %s", got, want)
	}

	if got, want := compact(t, s, minute(3)), (store.CompactStats{}); got != want {
		t.Errorf("Compact(minute 3) again = %+v, want %+v", got, want)
	}
	if got, want := compact(t, s, minute(10)), (store.CompactStats{Tombstones: 1, FeedRecords: 2}); got != want {
		t.Errorf("Compact(minute 10) = %+v, want %+v", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: 4, Horizon: 4}); got != want {
		t.Errorf("Head() = %+v, want %+v", got, want)
	}
	if got, want := shows(changes(t, s, p, 0)), "d@1=1"; got != want {
		t.Errorf("Changes(0) = %s, want %s", got, want)
	}
	// The partition goes on from where it was.
	if got, want := commit(t, s, p, store.Commit{Time: minute(11), Entries: []store.Entry{del("d")}}), uint64(5); got != want {
		t.Errorf("commit after Compact got version %d, want %d", got, want)
	}
}

// testCompactStaleIndex rewrites tombstoned keys: Compact must drop only the
// tombstone it indexed, never the entry that replaced it.
func testCompactStaleIndex(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Time: minute(0), Entries: []store.Entry{del("x")}}) // a key never present
	commit(t, s, p, store.Commit{Time: minute(1), Entries: []store.Entry{put("x", "2")}})
	commit(t, s, p, store.Commit{Time: minute(1), Entries: []store.Entry{del("y")}})
	commit(t, s, p, store.Commit{Time: minute(2), Entries: []store.Entry{put("y", "4")}})
	commit(t, s, p, store.Commit{Time: minute(5), Entries: []store.Entry{del("y")}})

	if got, want := compact(t, s, minute(3)), (store.CompactStats{Tombstones: 0, FeedRecords: 4}); got != want {
		t.Errorf("Compact(minute 3) = %+v, want %+v", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: 5}); got != want {
		t.Errorf("Head() = %+v, want %+v", got, want)
	}
	if got, want := shows(changes(t, s, p, 0)), "x@2=2 y@5(del)"; got != want {
		t.Errorf("Changes(0) = %s, want %s", got, want)
	}
	if got, want := compact(t, s, minute(6)), (store.CompactStats{Tombstones: 1, FeedRecords: 1}); got != want {
		t.Errorf("Compact(minute 6) = %+v, want %+v", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: 5, Horizon: 5}); got != want {
		t.Errorf("Head() = %+v, want %+v", got, want)
	}
	if got, want := shows(changes(t, s, p, 0)), "x@2=2"; got != want {
		t.Errorf("Changes(0) = %s, want %s", got, want)
	}
}

func testCompactAfterErase(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Time: minute(0), Entries: []store.Entry{del("a"), put("b", "1")}})
	commit(t, s, p, store.Commit{Time: minute(1), Erase: true, Entries: []store.Entry{put("c", "2")}})
	// The erase dropped the first commit's feed record already.
	if got, want := compact(t, s, minute(2)), (store.CompactStats{Tombstones: 0, FeedRecords: 1}); got != want {
		t.Errorf("Compact(minute 2) = %+v, want %+v", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: 2, Horizon: 2}); got != want {
		t.Errorf("Head() = %+v, want %+v", got, want)
	}
	commit(t, s, p, store.Commit{Time: minute(3), Entries: []store.Entry{del("c")}})
	if got, want := compact(t, s, minute(4)), (store.CompactStats{Tombstones: 1, FeedRecords: 1}); got != want {
		t.Errorf("Compact(minute 4) = %+v, want %+v", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: 3, Horizon: 3}); got != want {
		t.Errorf("Head() = %+v, want %+v", got, want)
	}
	if got := shows(changes(t, s, p, 0)); got != "" {
		t.Errorf("Changes(0) = %s, want none", got)
	}
}

// testCompactDuringUpdates compacts everything, over and over, while a
// writer tombstones and rewrites keys.
func testCompactDuringUpdates(t *testing.T, s store.Store) {
	p := user("alice")
	const commits, keys = 300, 5
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := range commits {
			k := put(fmt.Sprintf("k%d", i%keys), fmt.Sprint(i))
			if i%2 == 0 {
				k = del(k.Key)
			}
			c := store.Commit{Time: base.Add(time.Duration(i) * time.Second), Entries: []store.Entry{put(fmt.Sprintf("keep%03d", i), "x"), k}}
			if _, err := tryCommit(s, p, c); err != nil {
				t.Errorf("commit %d: %v", i, err)
				return
			}
		}
	})
	var dropped int
	wg.Go(func() {
		for finished := false; !finished; {
			select {
			case <-done:
				finished = true
			default:
			}
			st, err := s.Compact(context.Background(), minute(60))
			if err != nil {
				t.Errorf("Compact: %v", err)
				return
			}
			dropped += st.Tombstones
		}
	})
	wg.Wait()
	if dropped > commits/2 {
		t.Errorf("Compact dropped %d tombstones, only %d were written", dropped, commits/2)
	}
	h := head(t, s, p)
	if h.Version != commits {
		t.Errorf("Head().Version = %d, want %d", h.Version, commits)
	}
	es := changes(t, s, p, 0)
	live := 0
	for _, e := range es {
		if e.Deleted {
			t.Errorf("tombstone %s survived a Compact after the last commit", show(e))
		} else {
			live++
		}
	}
	// keep000..keep299, and k0, k2, k4: last written by commits 295, 297
	// and 299, which put.
	if got, want := live, commits+3; got != want {
		t.Errorf("live entries = %d, want %d: %s", got, want, shows(es))
	}
}
