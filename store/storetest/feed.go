package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/store"
)

// feed returns the records Feed(after) hands its fn.
func feed(t *testing.T, s store.Store, after store.FeedPos) []store.FeedRecord {
	t.Helper()
	var rs []store.FeedRecord
	err := s.Feed(context.Background(), after, func(r store.FeedRecord) (bool, error) {
		rs = append(rs, r)
		return true, nil
	})
	if err != nil {
		t.Fatalf("Feed(%x): %v", after, err)
	}
	return rs
}

func feedBounds(t *testing.T, s store.Store) (horizon, last store.FeedPos) {
	t.Helper()
	horizon, last, err := s.FeedBounds(context.Background())
	if err != nil {
		t.Fatalf("FeedBounds: %v", err)
	}
	return horizon, last
}

// showRecord renders a record without its position, which is the store's own:
// partition@version, the minute of base it was made at, then erase and ops.
func showRecord(r store.FeedRecord) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s@%d", r.Partition, r.Version)
	if d := r.Time.Sub(base); d%time.Minute == 0 {
		fmt.Fprintf(&b, " m%d", d/time.Minute)
	} else {
		fmt.Fprintf(&b, " %s", r.Time.UTC().Format("2006-01-02T15:04:05.999999999"))
	}
	if r.Erase {
		b.WriteString(" erase")
	}
	fmt.Fprintf(&b, " %q", r.Ops)
	return b.String()
}

// showRecords renders records in order, separated by "; ".
func showRecords(rs []store.FeedRecord) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = showRecord(r)
	}
	return strings.Join(s, "; ")
}

// byPartition renders, per partition, its records in order: the order
// across partitions is the store's own.
func byPartition(rs []store.FeedRecord) map[store.Partition]string {
	m := make(map[store.Partition]string)
	for _, r := range rs {
		if m[r.Partition] != "" {
			m[r.Partition] += "; "
		}
		m[r.Partition] += showRecord(r)
	}
	return m
}

// distinctPositions fails the test if two records have one position.
// Positions are the store's own: only Feed interprets them.
func distinctPositions(t *testing.T, rs []store.FeedRecord) {
	t.Helper()
	seen := make(map[store.FeedPos]int, len(rs))
	for i, r := range rs {
		if j, dup := seen[r.Pos]; dup {
			t.Fatalf("Feed: records %d and %d have the same position %x", j, i, r.Pos)
		}
		seen[r.Pos] = i
	}
}

func testFeedRecords(t *testing.T, s store.Store) {
	p, q := user("alice"), shared("catalog")
	if got := feed(t, s, ""); len(got) != 0 {
		t.Fatalf("Feed(\"\") of an empty store = %s, want none", showRecords(got))
	}
	commit(t, s, p, store.Commit{Time: minute(0), Entries: []store.Entry{put("a", "1")}, Ops: []byte("p1"), Device: "d", Batch: 1})
	commit(t, s, q, store.Commit{Time: minute(1), Entries: []store.Entry{put("x", "1")}, Ops: []byte{0, 0xff, 1}})
	commit(t, s, p, store.Commit{Time: minute(2), Entries: []store.Entry{del("a"), put("b", "2")}, Ops: []byte("p2")})
	commit(t, s, user("catalog"), store.Commit{Time: minute(3), Erase: true, Ops: []byte("u1")})
	commit(t, s, p, store.Commit{Time: minute(4)}) // no ops
	commit(t, s, q, store.Commit{Time: minute(5), Entries: []store.Entry{del("x")}, Ops: []byte("q2")})

	rs := feed(t, s, "")
	distinctPositions(t, rs)
	got := byPartition(rs)
	for part, want := range map[store.Partition]string{
		p:               `user:alice@1 m0 "p1"; user:alice@2 m2 "p2"; user:alice@3 m4 ""`,
		q:               `shared:catalog@1 m1 "\x00\xff\x01"; shared:catalog@2 m5 "q2"`,
		user("catalog"): `user:catalog@1 m3 erase "u1"`,
	} {
		if got[part] != want {
			t.Errorf("Feed(0) records of %s = %s, want %s", part, got[part], want)
		}
	}
	if len(got) != 3 {
		t.Errorf("Feed(0) = %s, want records of 3 partitions", showRecords(rs))
	}
	for _, r := range rs {
		if r.Partition == p && r.Version == 1 && !r.Time.Equal(minute(0)) {
			t.Errorf("%s@1's Time = %v, want %v", p, r.Time, minute(0))
		}
	}

	// Resuming after any record gives exactly the records after it.
	for i, r := range rs {
		if got, want := showRecords(feed(t, s, r.Pos)), showRecords(rs[i+1:]); got != want {
			t.Errorf("Feed(position of record %d) = %s, want %s", i, got, want)
		}
	}
	if _, last := feedBounds(t, s); len(feed(t, s, last)) != 0 {
		t.Errorf("Feed(FeedBounds() last %x) = %s, want none: last is before a record", last, showRecords(feed(t, s, last)))
	}
	if horizon, _ := feedBounds(t, s); showRecords(feed(t, s, horizon)) != showRecords(rs) {
		t.Errorf("Feed(FeedBounds() horizon) = %s, want %s", showRecords(feed(t, s, horizon)), showRecords(rs))
	}
	// A record's ops are the caller's to keep.
	again := feed(t, s, "")
	again[0].Ops[0] = 'X'
	if got := feed(t, s, ""); string(got[0].Ops) != string(rs[0].Ops) {
		t.Errorf("a record's ops changed to %q when a caller changed its copy", got[0].Ops)
	}
}

func testFeedStopAndError(t *testing.T, s store.Store) {
	p := user("alice")
	for range 3 {
		commit(t, s, p, store.Commit{Ops: []byte("x")})
	}
	calls := 0
	err := s.Feed(context.Background(), "", func(store.FeedRecord) (bool, error) {
		calls++
		return false, nil
	})
	if err != nil || calls != 1 {
		t.Errorf("Feed with fn returning false = %v after %d calls, want nil after 1", err, calls)
	}
	calls = 0
	err = s.Feed(context.Background(), "", func(store.FeedRecord) (bool, error) {
		calls++
		return true, errBoom
	})
	if !errors.Is(err, errBoom) || calls != 1 {
		t.Errorf("Feed with fn failing = %v after %d calls, want %v after 1", err, calls, errBoom)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls = 0
	err = s.Feed(ctx, "", func(store.FeedRecord) (bool, error) {
		calls++
		cancel()
		return true, nil
	})
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("Feed with ctx canceled in fn = %v after %d calls, want %v after 1", err, calls, context.Canceled)
	}
	calls = 0
	err = s.Feed(ctx, "", func(store.FeedRecord) (bool, error) {
		calls++
		return true, nil
	})
	if !errors.Is(err, context.Canceled) || calls != 0 {
		t.Errorf("Feed with ctx canceled = %v after %d calls, want %v after none", err, calls, context.Canceled)
	}
}

// testFeedBoundsAdvance commits one at a time: each commit's record comes
// after the last position FeedBounds gave before it, and within the last it
// gives after.
func testFeedBoundsAdvance(t *testing.T, s store.Store) {
	horizon, last := feedBounds(t, s)
	if got := feed(t, s, horizon); len(got) != 0 {
		t.Fatalf("Feed(horizon) of an empty store = %s, want none", showRecords(got))
	}
	for i, p := range []store.Partition{user("alice"), user("bob"), user("alice"), shared("alice")} {
		v := commit(t, s, p, store.Commit{Time: minute(i), Ops: []byte(fmt.Sprint(i))})
		rs := feed(t, s, last)
		if got, want := showRecords(rs), fmt.Sprintf("%s@%d m%d %q", p, v, i, fmt.Sprint(i)); got != want {
			t.Fatalf("Feed(last %x) after commit %d = %s, want %s", last, i, got, want)
		}
		h2, last2 := feedBounds(t, s)
		if h2 != horizon {
			t.Errorf("FeedBounds() horizon moved from %x to %x without Compact", horizon, h2)
		}
		if got := feed(t, s, last2); len(got) != 0 {
			t.Errorf("Feed(FeedBounds() last) after commit %d = %s, want none", i, showRecords(got))
		}
		last = last2
	}
}

// testFeedConcurrentCommits commits from many goroutines to many partitions
// while a reader tails the feed with repeated Feed calls, each stopping
// after a few records: it must see every commit exactly once, each
// partition's in version order, and never skip one that was in flight.
func testFeedConcurrentCommits(t *testing.T, s store.Store) {
	const writers, parts, each = 8, 5, 25
	partition := func(i int) store.Partition { return user(fmt.Sprintf("user%d", i)) }
	done := make(chan struct{})
	var wg sync.WaitGroup
	var writing sync.WaitGroup
	start := make(chan struct{})
	for w := range writers {
		writing.Go(func() {
			<-start
			for i := range each {
				p := partition((w + i) % parts)
				err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
					h, err := r.Head()
					if err != nil {
						return nil, err
					}
					v := h.Version + 1
					return &store.Commit{Version: v, Time: base, Entries: []store.Entry{
						{Key: fmt.Sprintf("w%d", w), Value: []byte(fmt.Sprint(i)), Version: v, ScalarVersion: v},
					}, Ops: fmt.Appendf(nil, "%s@%d", p, v)}, nil
				})
				if err != nil {
					t.Errorf("writer %d commit %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		writing.Wait()
		close(done)
	})

	horizon, _ := feedBounds(t, s)
	after := horizon
	seen := make(map[store.Partition]uint64) // the last version seen of each
	calls := 0
	close(start)
	for finished := false; !finished; calls++ {
		select {
		case <-done:
			finished = true // one more Feed after every commit returned
		default:
		}
		limit := 1 + calls%7
		n := 0
		err := s.Feed(context.Background(), after, func(r store.FeedRecord) (bool, error) {
			if r.Pos == after {
				return false, fmt.Errorf("position %x again after resuming after it", r.Pos)
			}
			if want := seen[r.Partition] + 1; r.Version != want {
				return false, fmt.Errorf("%s: version %d, want %d (each once, in order, none skipped)", r.Partition, r.Version, want)
			}
			if got, want := string(r.Ops), fmt.Sprintf("%s@%d", r.Partition, r.Version); got != want {
				return false, fmt.Errorf("record %s@%d has ops %q", r.Partition, r.Version, got)
			}
			seen[r.Partition] = r.Version
			after = r.Pos
			n++
			return n < limit, nil
		})
		if err != nil {
			t.Errorf("Feed(%x): %v", after, err)
			break
		}
		feedBounds(t, s)
		if n == limit {
			finished = false // stopped early: read on
		} else if n == 0 {
			runtime.Gosched()
		}
	}
	wg.Wait()
	total := 0
	for i := range parts {
		p := partition(i)
		h := head(t, s, p)
		if got := seen[p]; got != h.Version {
			t.Errorf("%s: feed reader saw versions 1..%d, head is %d", p, got, h.Version)
		}
		total += int(h.Version)
	}
	if total != writers*each {
		t.Errorf("%d commits in all, want %d", total, writers*each)
	}
	t.Logf("%d Feed calls", calls)
}

func testFeedCompact(t *testing.T, s store.Store) {
	p, q := user("alice"), user("bob")
	commit(t, s, p, store.Commit{Time: minute(0), Ops: []byte("p1")})
	commit(t, s, p, store.Commit{Time: minute(1), Ops: []byte("p2")})
	commit(t, s, q, store.Commit{Time: minute(1), Ops: []byte("q1")})
	commit(t, s, p, store.Commit{Time: minute(3), Ops: []byte("p3")})
	commit(t, s, q, store.Commit{Time: minute(4), Ops: []byte("q2")})
	all := feed(t, s, "")
	if len(all) != 5 {
		t.Fatalf("Feed(\"\") = %s, want 5 records", showRecords(all))
	}

	if got, want := compact(t, s, minute(2)), (store.CompactStats{FeedRecords: 3}); got != want {
		t.Errorf("Compact(minute 2) = %+v, want %+v", got, want)
	}
	horizon, last := feedBounds(t, s)
	if got := feed(t, s, last); len(got) != 0 {
		t.Errorf("Feed(FeedBounds() last) = %s, want none", showRecords(got))
	}
	// The records kept, in the feed's order; and the positions after which
	// a dropped record came, from which Feed can no longer read on.
	var kept []store.FeedRecord
	behind := []store.FeedPos{""}
	for i, r := range all {
		if !r.Time.Before(minute(2)) {
			kept = append(kept, r)
			continue
		}
		for _, before := range all[:i] {
			behind = append(behind, before.Pos)
		}
	}
	if got, want := showRecords(feed(t, s, horizon)), showRecords(kept); got != want {
		t.Errorf("Feed(horizon) = %s, want %s", got, want)
	}
	for _, after := range behind {
		err := s.Feed(context.Background(), after, func(r store.FeedRecord) (bool, error) {
			return false, fmt.Errorf("got %s", showRecord(r))
		})
		if !errors.Is(err, store.ErrCompacted) {
			t.Errorf("Feed(%x), before a dropped record, = %v, want %v", after, err, store.ErrCompacted)
		}
	}

	if got, want := compact(t, s, minute(2)), (store.CompactStats{}); got != want {
		t.Errorf("Compact(minute 2) again = %+v, want %+v", got, want)
	}
	if h, _ := feedBounds(t, s); h != horizon {
		t.Errorf("FeedBounds() horizon = %x after a Compact that dropped nothing, was %x", h, horizon)
	}
	if got, want := compact(t, s, minute(10)), (store.CompactStats{FeedRecords: 2}); got != want {
		t.Errorf("Compact(minute 10) = %+v, want %+v", got, want)
	}
	horizon2, _ := feedBounds(t, s)
	if got := feed(t, s, horizon2); len(got) != 0 {
		t.Errorf("Feed(horizon) after dropping every record = %s, want none", showRecords(got))
	}
	// The feed goes on above the horizon.
	commit(t, s, q, store.Commit{Time: minute(11), Ops: []byte("q3")})
	if got, want := showRecords(feed(t, s, horizon2)), `user:bob@3 m11 "q3"`; got != want {
		t.Errorf("Feed(horizon) after a new commit = %s, want %s", got, want)
	}
}

// testFeedErase erases a partition: its earlier records leave the feed, and
// a reader, from the start or from a cursor taken before, sees the erase's
// record instead.
func testFeedErase(t *testing.T, s store.Store) {
	p, q := user("alice"), user("bob")
	commit(t, s, p, store.Commit{Time: minute(0), Entries: []store.Entry{put("a", "1")}, Ops: []byte("p1")})
	first := feed(t, s, "")
	if len(first) == 0 {
		t.Fatal("Feed from the start after a commit delivered nothing")
	}
	cursor := first[0].Pos
	commit(t, s, q, store.Commit{Time: minute(1), Ops: []byte("q1")})
	commit(t, s, p, store.Commit{Time: minute(2), Entries: []store.Entry{del("a")}, Ops: []byte("p2")})
	commit(t, s, p, store.Commit{Time: minute(3), Erase: true, Entries: []store.Entry{put("c", "3")}, Ops: []byte("erase")})
	commit(t, s, p, store.Commit{Time: minute(4), Ops: []byte("p4")})
	commit(t, s, q, store.Commit{Time: minute(5), Ops: []byte("q2")})
	horizon, _ := feedBounds(t, s)
	for _, after := range []store.FeedPos{horizon, cursor} {
		got := byPartition(feed(t, s, after))
		for part, want := range map[store.Partition]string{
			p: `user:alice@3 m3 erase "erase"; user:alice@4 m4 "p4"`,
			q: `user:bob@1 m1 "q1"; user:bob@2 m5 "q2"`,
		} {
			if got[part] != want {
				t.Errorf("Feed(%x) records of %s = %s, want %s", after, part, got[part], want)
			}
		}
	}
}

// testEraseLeavesNoData writes a marker into a partition's keys, values and
// ops, tombstones some of the keys (and rewrites tombstones), and erases it:
// afterwards no read and, with dump, nothing the store holds shows the
// marker.
func testEraseLeavesNoData(t *testing.T, s store.Store, dump func(store.Store) ([][]byte, error)) {
	const marker = "Zq7-erased-marker"
	p, other := user("alice"), user("bob")
	k := func(n int) string { return fmt.Sprintf("notes/%s/%d", marker, n) }
	v := func(n int) string { return fmt.Sprintf("value %s %d", marker, n) }
	ops := func(n int) []byte { return []byte(fmt.Sprint("ops ", marker, n)) }
	commit(t, s, other, store.Commit{Time: minute(0), Entries: []store.Entry{put("k", "other")}, Ops: []byte("other")})
	commit(t, s, p, store.Commit{Time: minute(0), Entries: []store.Entry{put(k(1), v(1)), put(k(2), v(2)), put(k(3), v(3)), put(k(4), v(4))},
		Ops: ops(1), Device: "phone", Batch: 1})
	commit(t, s, p, store.Commit{Time: minute(1), Entries: []store.Entry{del(k(1)), del(k(2)), del(k(3)), del(k(5))}, Ops: ops(2)})
	// A tombstone rewritten, one tombstoned again later, one again at the
	// same time.
	commit(t, s, p, store.Commit{Time: minute(2), Entries: []store.Entry{put(k(1), v(11)), del(k(2))}, Ops: ops(3)})
	commit(t, s, p, store.Commit{Time: minute(2), Entries: []store.Entry{del(k(2)), put(k(6), v(6))}, Ops: ops(4)})
	commit(t, s, p, store.Commit{Time: minute(3), Entries: []store.Entry{del(k(6))}, Ops: ops(5)})
	contains := func() []string {
		if dump == nil {
			return nil
		}
		s := s.(*checked).Store
		kvs, err := dump(s)
		if err != nil {
			t.Fatalf("dump: %v", err)
		}
		var found []string
		for _, kv := range kvs {
			if bytes.Contains(kv, []byte(marker)) {
				found = append(found, fmt.Sprintf("%q", kv))
			}
		}
		return found
	}
	if dump != nil && len(contains()) == 0 {
		t.Fatal("the dump shows no marker before the erase")
	}

	commit(t, s, p, store.Commit{Time: minute(4), Erase: true, Entries: []store.Entry{put("fresh", "new")}, Ops: []byte("erase"), Device: "phone", Batch: 2})

	if got, want := shows(changes(t, s, p, 0)), "fresh@6=new"; got != want {
		t.Errorf("Changes(0) after erase = %s, want %s", got, want)
	}
	for n := range 7 {
		if got := get(t, s, p, k(n)); got != "none" {
			t.Errorf("Get(%q) after erase = %s, want none", k(n), got)
		}
	}
	rs := feed(t, s, "")
	if got, want := byPartition(rs)[p], `user:alice@6 m4 erase "erase"`; got != want {
		t.Errorf("Feed(0) records of %s after erase = %s, want %s", p, got, want)
	}
	for _, r := range rs {
		if bytes.Contains(r.Ops, []byte(marker)) {
			t.Errorf("feed record %s after erase holds the marker", showRecord(r))
		}
	}
	if found := contains(); len(found) > 0 {
		slices.Sort(found)
		t.Errorf("after erase the store still holds the marker in:\n%s", strings.Join(found, "\n"))
	}
	if got, want := deviceBatch(t, s, p, "phone"), uint64(2); got != want {
		t.Errorf("DeviceBatch(phone) after erase = %d, want %d", got, want)
	}
	if got, want := get(t, s, other, "k"), "k@1=other"; got != want {
		t.Errorf("other partition's Get(k) = %s, want %s", got, want)
	}
	// Retention still finds nothing of it left to drop, and keeps the rest.
	if got, want := compact(t, s, minute(10)), (store.CompactStats{FeedRecords: 2}); got != want {
		t.Errorf("Compact(minute 10) after erase = %+v, want %+v", got, want)
	}
	if found := contains(); len(found) > 0 {
		t.Errorf("after Compact the store holds the marker in:\n%s", strings.Join(found, "\n"))
	}
}
