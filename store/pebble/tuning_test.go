package pebble

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/store"
)

// TestDBOptions checks the Pebble options Open opens with by default: the
// cache sized for the block cache and two memtables, bloom filters, and a
// refusal of invalid options.
func TestDBOptions(t *testing.T) {
	t.Parallel()
	opts, err := Options{}.withDefaults()
	if err != nil {
		t.Fatalf("Options{}.withDefaults(): %v", err)
	}
	popts := dbOptions(opts)
	if got, want := popts.CacheSize, int64(DefaultCacheSize+2*DefaultMemTableSize); got != want {
		t.Errorf("CacheSize = %d, want %d", got, want)
	}
	if got, want := popts.MemTableSize, uint64(DefaultMemTableSize); got != want {
		t.Errorf("MemTableSize = %d, want %d", got, want)
	}
	if popts.Levels[0].FilterPolicy == nil {
		t.Error("no bloom filter on level 0")
	}
	if _, err := (Options{MemTableSize: 1}).withDefaults(); err == nil {
		t.Error("a 1-byte memtable: no error")
	}
	if opts.WALMinSyncInterval != DefaultWALMinSyncInterval {
		t.Errorf("WALMinSyncInterval = %v, want %v", opts.WALMinSyncInterval, DefaultWALMinSyncInterval)
	}
	if _, err := (Options{WALMinSyncInterval: MaxWALMinSyncInterval + 1}).withDefaults(); err == nil {
		t.Errorf("a WAL sync interval over %v: no error", MaxWALMinSyncInterval)
	}
}

// TestSyncGap checks when the WAL waits between fsyncs: only after one
// during which more than one synced commit began.
func TestSyncGap(t *testing.T) {
	t.Parallel()
	g := &syncGap{interval: time.Millisecond}
	for _, tc := range []struct {
		began int
		want  time.Duration
	}{{0, 0}, {1, 0}, {2, time.Millisecond}, {1, 0}, {50, time.Millisecond}, {0, 0}} {
		for range tc.began {
			g.begin()
		}
		if got := g.next(); got != tc.want {
			t.Errorf("after an fsync with %d commits begun, wait %v, want %v", tc.began, got, tc.want)
		}
	}
}

// TestWALSyncInterval commits through a store whose WAL waits 100ms (the
// most it may) between fsyncs: a lone writer's commits never wait for it,
// and eight writers at once do, so that many commits share each fsync.
func TestWALSyncInterval(t *testing.T) {
	t.Parallel()
	const interval = MaxWALMinSyncInterval
	s, err := Open(t.TempDir(), Options{WALMinSyncInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	commit := func(p store.Partition) error {
		return s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
			h, err := r.Head()
			if err != nil {
				return nil, err
			}
			v := h.Version + 1
			return &store.Commit{Version: v, Time: time.Now(),
				Entries: []store.Entry{{Key: "k", Value: []byte("v"), Version: v, ScalarVersion: v}}, Ops: []byte("ops")}, nil
		})
	}

	// Were each of these to wait for the interval, they would take 1.9s.
	start := time.Now()
	for range 20 {
		if err := commit(store.Partition{Name: "lone"}); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d >= 10*interval {
		t.Errorf("20 commits one after another took %v: a lone writer waited for the WAL's sync interval", d)
	}

	// Eight writers of four commits each: after at least two of the
	// fsyncs, more than one commit had begun, so the WAL waited.
	start = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			for range 4 {
				if err := commit(store.Partition{Name: fmt.Sprint("writer", i)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*interval {
		t.Errorf("8 writers' 32 commits took %v, under twice the WAL's sync interval: it never waited", d)
	}
}

// TestTablesHoldOneKind flushes commits that write keys of several kinds
// (heads, entries, the version index, devices and feed records) and checks that no table holds two kinds: the feed's tables stay
// apart from the rest (see splitByKind).
func TestTablesHoldOneKind(t *testing.T) {
	t.Parallel()
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 200 {
		p := store.Partition{Name: fmt.Sprint("user", i%20)}
		err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
			h, err := r.Head()
			if err != nil {
				return nil, err
			}
			v := h.Version + 1
			return &store.Commit{Version: v, Time: time.Now(), Device: fmt.Sprint("d", i%7), Batch: uint64(i + 1),
				Entries: []store.Entry{{Key: fmt.Sprint("k", i%3), Value: []byte("v"), Version: v, ScalarVersion: v}},
				Ops:     []byte("ops")}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	levels, err := s.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[byte]bool{}
	for _, tables := range levels {
		for _, tb := range tables {
			lo, hi := tb.Smallest.UserKey, tb.Largest.UserKey
			if lo[0] != hi[0] {
				t.Errorf("table %s holds keys from %q to %q: two kinds", tb.FileNum, lo, hi)
			}
			kinds[lo[0]] = true
		}
	}
	for _, k := range []byte{kindHead, kindEntry, kindVersion, kindDevice, kindFeed} {
		if !kinds[k] {
			t.Errorf("no table of kind %q: the test wrote none, so it checks nothing of it", k)
		}
	}
}
