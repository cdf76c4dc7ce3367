package pebble

import (
	"context"
	"fmt"
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
