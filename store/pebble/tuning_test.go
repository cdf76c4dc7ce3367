package pebble

import "testing"

// TestDBOptions checks the Pebble options DBOptions gives (those Open opens
// with): the cache sized for the block cache and two memtables, bloom
// filters, and a refusal of invalid options.
func TestDBOptions(t *testing.T) {
	t.Parallel()
	popts, err := DBOptions(Options{})
	if err != nil {
		t.Fatalf("DBOptions(Options{}): %v", err)
	}
	if got, want := popts.CacheSize, int64(DefaultCacheSize+2*DefaultMemTableSize); got != want {
		t.Errorf("CacheSize = %d, want %d", got, want)
	}
	if got, want := popts.MemTableSize, uint64(DefaultMemTableSize); got != want {
		t.Errorf("MemTableSize = %d, want %d", got, want)
	}
	if popts.Levels[0].FilterPolicy == nil {
		t.Error("no bloom filter on level 0")
	}
	if _, err := DBOptions(Options{MemTableSize: 1}); err == nil {
		t.Error("DBOptions with a 1-byte memtable: no error")
	}
}
