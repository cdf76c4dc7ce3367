// Package storetest is the conformance suite every [store.Store] passes.
// A store's own test calls [Run] with a factory of fresh stores; the suite
// assumes nothing about how a store keeps its data (no directory, no
// particular engine), only what package store promises.
//
// After every test the suite checks each partition it wrote for internal
// consistency: Changes in (version, key) order with one entry per key, Get
// agreeing with Changes, Scan listing exactly the live entries, and the
// horizon at or below the version; and the change feed for order: no
// position twice, each partition's versions increasing and at most its head.
// Feed positions are opaque to the suite, as to every caller: it never
// compares two, it only gives them back to Feed.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/store"
)

// Options gives the suite what it cannot learn through [store.Store].
type Options struct {
	// Dump, when set, returns every key and every value s holds, raw: for
	// a key-value engine each key and each value, for a database each row of
	// each table rendered as bytes. The erasure test looks into it for the
	// erased partition's data. s is a store open returned.
	Dump func(s store.Store) ([][]byte, error)
}

// Run runs the conformance suite as parallel subtests of t. Each call of open
// must return a fresh, empty store, isolated from every other store it
// returns, and register the store's cleanup (Close) with t.Cleanup; that
// cleanup must accept a store the test has already closed.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	RunOptions(t, open, Options{})
}

// RunOptions is [Run] with options.
func RunOptions(t *testing.T, open func(t *testing.T) store.Store, opts Options) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"EmptyPartition", testEmptyPartition},
		{"CommitThenRead", testCommitThenRead},
		{"EntryFieldsRoundTrip", testEntryFieldsRoundTrip},
		{"LargeValue", testLargeValue},
		{"ChangesOrder", testChangesOrder},
		{"ChangesManyVersions", testChangesManyVersions},
		{"ChangesStopAndError", testChangesStopAndError},
		{"Scan", testScan},
		{"ScanStopAndError", testScanStopAndError},
		{"DeviceBatch", testDeviceBatch},
		{"IdempotencyKeys", testIdempotencyKeys},
		{"CompactIdempotencyKeys", testCompactIdempotencyKeys},
		{"NothingApplied", testNothingApplied},
		{"Erase", testErase},
		{"PartitionsSeparate", testPartitionsSeparate},
		{"ConcurrentUpdatesSerialised", testConcurrentUpdatesSerialised},
		{"ManyPartitionsParallel", testManyPartitionsParallel},
		{"ViewConsistentDuringUpdates", testViewConsistentDuringUpdates},
		{"CompactTombstones", testCompactTombstones},
		{"CompactStaleIndex", testCompactStaleIndex},
		{"CompactAfterErase", testCompactAfterErase},
		{"CompactDuringUpdates", testCompactDuringUpdates},
		{"FeedRecords", testFeedRecords},
		{"FeedStopAndError", testFeedStopAndError},
		{"FeedBoundsAdvance", testFeedBoundsAdvance},
		{"FeedConcurrentCommits", testFeedConcurrentCommits},
		{"FeedCompact", testFeedCompact},
		{"FeedErase", testFeedErase},
		{"EraseLeavesNoData", func(t *testing.T, s store.Store) { testEraseLeavesNoData(t, s, opts.Dump) }},
		{"CloseWaitsForUpdate", testCloseWaitsForUpdate},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t, open))
		})
	}
}

// base is the default commit time: fixed, so that retention tests choose
// their cutoffs freely.
var base = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// timeout bounds every wait for another goroutine.
const timeout = 30 * time.Second

// checked is a store that remembers the partitions written to, and checks
// them when the test ends.
type checked struct {
	store.Store
	mu     sync.Mutex
	parts  map[store.Partition]bool
	closed bool
}

// newStore opens a store and registers its consistency check, which runs
// before the factory's cleanup closes it.
func newStore(t *testing.T, open func(t *testing.T) store.Store) store.Store {
	c := &checked{Store: open(t), parts: make(map[store.Partition]bool)}
	t.Cleanup(func() { c.check(t) })
	return c
}

func (c *checked) Update(ctx context.Context, p store.Partition, fn func(r store.Reader) (*store.Commit, error)) error {
	c.mu.Lock()
	c.parts[p] = true
	c.mu.Unlock()
	return c.Store.Update(ctx, p, fn)
}

func (c *checked) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return c.Store.Close()
}

// check checks every partition written, unless the test closed the store.
func (c *checked) check(t *testing.T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	parts := make([]store.Partition, 0, len(c.parts))
	for p := range c.parts {
		parts = append(parts, p)
	}
	slices.SortFunc(parts, func(a, b store.Partition) int { return strings.Compare(a.String(), b.String()) })
	for _, p := range parts {
		if err := c.Store.View(context.Background(), p, checkPartition); err != nil {
			t.Errorf("consistency of %s: %v", p, err)
		}
	}
	if err := checkFeed(c.Store); err != nil {
		t.Errorf("consistency of the feed: %v", err)
	}
}

// checkFeed checks the feed's order: no position twice, and each
// partition's versions increasing and at most its head.
func checkFeed(s store.Store) error {
	ctx := context.Background()
	horizon, _, err := s.FeedBounds(ctx)
	if err != nil {
		return err
	}
	seen := make(map[store.FeedPos]bool)
	last := make(map[store.Partition]store.FeedRecord)
	err = s.Feed(ctx, horizon, func(r store.FeedRecord) (bool, error) {
		if seen[r.Pos] {
			return false, fmt.Errorf("position %x twice", r.Pos)
		}
		seen[r.Pos] = true
		if prev, ok := last[r.Partition]; ok && r.Version <= prev.Version {
			return false, fmt.Errorf("%s after %s", showRecord(r), showRecord(prev))
		}
		last[r.Partition] = r
		return true, nil
	})
	if err != nil {
		return err
	}
	for p, r := range last {
		v := r.Version
		var h store.Head
		err := s.View(ctx, p, func(r store.Reader) (err error) {
			h, err = r.Head()
			return err
		})
		if err != nil {
			return err
		}
		if v > h.Version {
			return fmt.Errorf("%s has a record of version %d above its head %d", p, v, h.Version)
		}
	}
	return nil
}

// checkPartition checks one partition's state for internal consistency.
func checkPartition(r store.Reader) error {
	h, err := r.Head()
	if err != nil {
		return err
	}
	if h.Horizon > h.Version {
		return fmt.Errorf("head %+v: horizon above version", h)
	}
	var changed []store.Entry
	err = r.Changes(0, func(e store.Entry) (bool, error) {
		changed = append(changed, e)
		return true, nil
	})
	if err != nil {
		return err
	}
	keys := make(map[string]bool)
	for i, e := range changed {
		if e.Version < 1 || e.Version > h.Version {
			return fmt.Errorf("entry %s: version outside 1..%d", show(e), h.Version)
		}
		if i > 0 && !entryBefore(changed[i-1], e) {
			return fmt.Errorf("changes: %s before %s", show(changed[i-1]), show(e))
		}
		if keys[e.Key] {
			return fmt.Errorf("changes: key %q twice", e.Key)
		}
		keys[e.Key] = true
		if e.Deleted && e.Value != nil {
			return fmt.Errorf("tombstone %s has a value", show(e))
		}
		g, ok, err := r.Get(e.Key)
		if err != nil {
			return err
		}
		if got, want := showOK(g, ok), show(e); got != want {
			return fmt.Errorf("Get(%q) = %s, Changes has %s", e.Key, got, want)
		}
	}
	var live []store.Entry
	for _, e := range changed {
		if !e.Deleted {
			live = append(live, e)
		}
	}
	slices.SortFunc(live, func(a, b store.Entry) int { return strings.Compare(a.Key, b.Key) })
	var scanned []store.Entry
	err = r.Scan("", "", func(e store.Entry) (bool, error) {
		scanned = append(scanned, e)
		return true, nil
	})
	if err != nil {
		return err
	}
	if got, want := shows(scanned), shows(live); got != want {
		return fmt.Errorf("Scan(\"\", \"\") = %s, live entries of Changes(0) = %s", got, want)
	}
	return nil
}

// entryBefore reports whether a sorts before b in (Version, Key) order.
func entryBefore(a, b store.Entry) bool {
	return a.Version < b.Version || a.Version == b.Version && a.Key < b.Key
}

func user(name string) store.Partition   { return store.Partition{Name: name} }
func shared(name string) store.Partition { return store.Partition{Shared: true, Name: name} }

// put is a live entry; commit fills in its versions.
func put(key, value string) store.Entry { return store.Entry{Key: key, Value: []byte(value)} }

// del is a tombstone; commit fills in its versions.
func del(key string) store.Entry { return store.Entry{Key: key, Deleted: true} }

// tryCommit applies c to p at the next version: it sets c's Version, each
// entry's Version (and ScalarVersion, when zero) and, when zero, c's Time.
// It returns the version committed.
func tryCommit(s store.Store, p store.Partition, c store.Commit) (uint64, error) {
	var version uint64
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		c := c
		c.Version = h.Version + 1
		c.Entries = slices.Clone(c.Entries)
		for i := range c.Entries {
			c.Entries[i].Version = c.Version
			if c.Entries[i].ScalarVersion == 0 {
				c.Entries[i].ScalarVersion = c.Version
			}
		}
		if c.Time.IsZero() {
			c.Time = base
		}
		version = c.Version
		return &c, nil
	})
	return version, err
}

// commit is tryCommit that fails the test on error.
func commit(t *testing.T, s store.Store, p store.Partition, c store.Commit) uint64 {
	t.Helper()
	v, err := tryCommit(s, p, c)
	if err != nil {
		t.Fatalf("commit to %s: %v", p, err)
	}
	return v
}

// view runs fn in a View of p, failing the test on error.
func view(t *testing.T, s store.Store, p store.Partition, fn func(r store.Reader) error) {
	t.Helper()
	if err := s.View(context.Background(), p, fn); err != nil {
		t.Fatalf("View(%s): %v", p, err)
	}
}

func head(t *testing.T, s store.Store, p store.Partition) store.Head {
	t.Helper()
	var h store.Head
	view(t, s, p, func(r store.Reader) (err error) {
		h, err = r.Head()
		return err
	})
	return h
}

// get returns key's entry in p as show renders it, "none" when absent.
func get(t *testing.T, s store.Store, p store.Partition, key string) string {
	t.Helper()
	var got string
	view(t, s, p, func(r store.Reader) error {
		e, ok, err := r.Get(key)
		got = showOK(e, ok)
		return err
	})
	return got
}

func deviceBatch(t *testing.T, s store.Store, p store.Partition, device string) uint64 {
	t.Helper()
	var b uint64
	view(t, s, p, func(r store.Reader) (err error) {
		b, err = r.DeviceBatch(device)
		return err
	})
	return b
}

// collect gathers what a Changes or Scan call hands its fn.
func collect(list func(fn func(store.Entry) (bool, error)) error) ([]store.Entry, error) {
	var es []store.Entry
	err := list(func(e store.Entry) (bool, error) {
		es = append(es, e)
		return true, nil
	})
	return es, err
}

func changes(t *testing.T, s store.Store, p store.Partition, after uint64) []store.Entry {
	t.Helper()
	var es []store.Entry
	view(t, s, p, func(r store.Reader) (err error) {
		es, err = collect(func(fn func(store.Entry) (bool, error)) error { return r.Changes(after, fn) })
		return err
	})
	return es
}

func scan(t *testing.T, s store.Store, p store.Partition, prefix, startAfter string) []store.Entry {
	t.Helper()
	var es []store.Entry
	view(t, s, p, func(r store.Reader) (err error) {
		es, err = collect(func(fn func(store.Entry) (bool, error)) error { return r.Scan(prefix, startAfter, fn) })
		return err
	})
	return es
}

// show renders an entry as key@version=value, key@version(del) for a
// tombstone; the scalar version is added when it differs from the version.
func show(e store.Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s@%d", e.Key, e.Version)
	if e.ScalarVersion != e.Version {
		fmt.Fprintf(&b, "/s%d", e.ScalarVersion)
	}
	if e.Deleted {
		b.WriteString("(del)")
	} else {
		fmt.Fprintf(&b, "=%s", e.Value)
	}
	return b.String()
}

// showOK renders a Get result.
func showOK(e store.Entry, ok bool) string {
	if !ok {
		return "none"
	}
	return show(e)
}

// shows renders entries in order, space separated.
func shows(es []store.Entry) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = show(e)
	}
	return strings.Join(s, " ")
}

// waitFor waits for ch to close, failing the test after timeout.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(timeout):
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// errBoom is an error of the test's own making.
var errBoom = errors.New("boom")
