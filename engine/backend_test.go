package engine_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/pebble"
	"github.com/dalvdb/dalv/value"
)

func newEngine(t *testing.T) *engine.Engine {
	t.Helper()
	st, err := pebble.Open(t.TempDir(), pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e, err := engine.New(engine.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func put(key, v string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: value.Scalar([]byte(v))}
}

// TestExportPagesAtOneVersion exports a partition of several pages: every
// key once, in order, every page at one version; and a commit between two
// pages fails the export with ErrChanged.
func TestExportPagesAtOneVersion(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	p := store.Partition{Name: "alice"}
	ctx := context.Background()
	const n = 2500 // three pages of engine.MaxPageSize
	for i := 0; i < n; i += 500 {
		var ops []*dalvv1.Op
		for k := i; k < i+500; k++ {
			ops = append(ops, put(fmt.Sprintf("k%05d", k), "v"))
		}
		if _, err := e.Commit(ctx, p, ops, engine.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var keys, pages int
	err := e.Export(ctx, p, func(version uint64, items []*dalvv1.Change) error {
		pages++
		if version != 5 {
			t.Errorf("page %d at version %d, want 5", pages, version)
		}
		for _, c := range items {
			if want := fmt.Sprintf("k%05d", keys); c.GetKey() != want {
				t.Fatalf("key %d is %q, want %q", keys, c.GetKey(), want)
			}
			keys++
		}
		return nil
	})
	if err != nil || keys != n || pages != 3 {
		t.Fatalf("Export = %v, %d keys in %d pages; want nil, %d keys in 3 pages", err, keys, pages, n)
	}

	pages = 0
	err = e.Export(ctx, p, func(version uint64, items []*dalvv1.Change) error {
		if pages++; pages == 1 {
			_, err := e.Commit(ctx, p, []*dalvv1.Op{put("k99999", "new")}, engine.CommitOptions{})
			return err
		}
		return nil
	})
	if !errors.Is(err, engine.ErrChanged) || pages != 1 {
		t.Fatalf("Export with a commit after page 1 = %v after %d pages, want ErrChanged after 1", err, pages)
	}

	// An empty partition is one empty page at version 0.
	pages = 0
	err = e.Export(ctx, store.Partition{Name: "nobody"}, func(version uint64, items []*dalvv1.Change) error {
		pages++
		if version != 0 || len(items) != 0 {
			t.Errorf("empty partition's page: version %d, %d items", version, len(items))
		}
		return nil
	})
	if err != nil || pages != 1 {
		t.Fatalf("Export of an empty partition = %v, %d pages; want nil, 1", err, pages)
	}
}
