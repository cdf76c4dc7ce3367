package pebble

import (
	"errors"
	"fmt"
	"testing"

	"github.com/dalvdb/dalv/store"
)

// TestInspect counts what a store keeps, before and after a full
// compaction, and refuses a directory another Open holds.
func TestInspect(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := store.Partition{Name: "alice"}
	for i := range 20 {
		c := store.Commit{Entries: []store.Entry{{Key: fmt.Sprintf("k%d", i%5), Value: []byte(fmt.Sprint(i))}}}
		if i == 19 {
			c.Entries[0].Deleted, c.Entries[0].Value = true, nil
		}
		if err := commit(s, p, c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Inspect(dir, false); !errors.Is(err, ErrLocked) {
		t.Fatalf("Inspect of a directory in use: %v, want ErrLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, compact := range []bool{false, true} {
		u, err := Inspect(dir, compact)
		if err != nil {
			t.Fatal(err)
		}
		if u.LiveKeys != 4 || u.Tombstones != 1 || u.FeedRecords != 20 || u.KeptBytes <= 0 || u.DirBytes <= 0 {
			t.Errorf("compact %v: %+v, want 4 live keys, 1 tombstone, 20 feed records and some bytes", compact, u)
		}
	}
}
