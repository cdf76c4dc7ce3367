package engine

import (
	"bytes"
	"context"
	"testing"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

var testPart = user("alice")

func mustSync(t *testing.T, e *Engine, device string, base, batch uint64, ops ...*dalvv1.Op) *dalvv1.SyncResponse {
	t.Helper()
	resp, err := e.Sync(context.Background(), SyncRequest{Partition: testPart, DeviceID: device, BaseVersion: base, Batch: batch, Ops: ops})
	if err != nil {
		t.Fatalf("sync base %d batch %d: %v", base, batch, err)
	}
	return resp
}

// TestConflictCheck checks that a sync conflicts exactly when a key it
// writes changed after its base version, and that a conflict changes nothing.
func TestConflictCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		base     uint64
		key      string
		conflict bool
	}{
		{"key changed after base", 1, "k", true},
		{"base at the key's change", 2, "k", false},
		{"other key", 1, "other", false},
		{"new key from zero", 0, "fresh", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, _ := newEngine(t, Limits{})
			mustSync(t, e, "d1", 0, 1, putOp("k", "1"))
			mustSync(t, e, "d1", 1, 2, putOp("k", "2"))
			resp := mustSync(t, e, "d2", tc.base, 1, putOp(tc.key, "mine"))
			got := resp.GetStatus() == dalvv1.SyncStatus_SYNC_STATUS_CONFLICT
			if got != tc.conflict {
				t.Fatalf("status %v, conflicts %v; want conflict %v", resp.GetStatus(), resp.GetConflicts(), tc.conflict)
			}
			want := uint64(3)
			if tc.conflict {
				want = 2
				if len(resp.GetConflicts()) != 1 || resp.GetConflicts()[0] != tc.key {
					t.Errorf("conflicts %v, want [%s]", resp.GetConflicts(), tc.key)
				}
			}
			if v := mustSync(t, e, "d3", 0, 0).GetVersion(); v != want {
				t.Errorf("partition at version %d, want %d", v, want)
			}
		})
	}
}

// TestPager checks that an answer is cut between commits at the response
// limit with more set, and that following the pages yields every change once.
func TestPager(t *testing.T) {
	t.Parallel()
	lim := Limits{MaxKeyBytes: 16, MaxValueBytes: 100}
	lim.MaxResponseBytes = lim.MaxKeyBytes + lim.MaxValueBytes + value.ChangeOverhead
	e, _ := newEngine(t, lim)
	big := string(bytes.Repeat([]byte("v"), 80))
	for i, k := range []string{"a", "b", "c"} {
		mustSync(t, e, "d1", uint64(i), uint64(i+1), putOp(k, big))
	}
	seen := map[string]int{}
	base, pages := uint64(0), 0
	for {
		resp := mustSync(t, e, "d2", base, 0)
		pages++
		for _, c := range resp.GetChanges() {
			seen[c.GetKey()]++
			if c.GetVersion() <= base || c.GetVersion() > resp.GetVersion() {
				t.Errorf("page after %d up to %d holds %q at version %d", base, resp.GetVersion(), c.GetKey(), c.GetVersion())
			}
		}
		if len(resp.GetChanges()) > 1 {
			t.Errorf("page after %d holds %d changes of %d bytes each; the limit fits one", base, len(resp.GetChanges()), value.ChangeSize("a", value.Scalar([]byte(big))))
		}
		if !resp.GetMore() {
			if resp.GetVersion() != 3 {
				t.Errorf("last page at version %d, want 3", resp.GetVersion())
			}
			break
		}
		if resp.GetVersion() <= base {
			t.Fatalf("page after %d says more but does not advance (version %d)", base, resp.GetVersion())
		}
		base = resp.GetVersion()
	}
	if pages != 3 {
		t.Errorf("%d pages, want 3 (one commit each)", pages)
	}
	for _, k := range []string{"a", "b", "c"} {
		if seen[k] != 1 {
			t.Errorf("key %q seen %d times, want once", k, seen[k])
		}
	}
}

// TestCollapse checks that an answer holds one entry per key, its latest,
// with a deleted key as a tombstone.
func TestCollapse(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t, Limits{})
	mustSync(t, e, "d1", 0, 1, putOp("k", "1"), putOp("gone", "x"))
	mustSync(t, e, "d1", 1, 2, putOp("k", "2"))
	mustSync(t, e, "d1", 2, 3, putOp("k", "3"), delOp("gone"))
	resp := mustSync(t, e, "d2", 0, 0)
	got := map[string]*dalvv1.Change{}
	for _, c := range resp.GetChanges() {
		if got[c.GetKey()] != nil {
			t.Errorf("key %q appears twice", c.GetKey())
		}
		got[c.GetKey()] = c
	}
	if len(got) != 2 {
		t.Fatalf("%d keys in the answer, want 2: %v", len(got), resp.GetChanges())
	}
	if k := got["k"]; string(k.GetValue().GetScalar()) != "3" || k.GetVersion() != 3 || k.GetDeleted() {
		t.Errorf("k: %v, want value 3 at version 3", k)
	}
	if g := got["gone"]; !g.GetDeleted() || g.GetValue() != nil || g.GetVersion() != 3 {
		t.Errorf("gone: %v, want a tombstone at version 3", g)
	}
}

// TestIdempotency checks that a batch sent twice is applied once and the
// repeat is answered as the first time was.
func TestIdempotency(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t, Limits{})
	first := mustSync(t, e, "d1", 0, 1, putOp("k", "1"))
	again := mustSync(t, e, "d1", 0, 1, putOp("k", "1"))
	if again.GetStatus() != first.GetStatus() || again.GetVersion() != first.GetVersion() || len(again.GetChanges()) != len(first.GetChanges()) {
		t.Errorf("repeat answered %v, the first time %v", again, first)
	}
	if v := mustSync(t, e, "d2", 0, 0).GetVersion(); v != 1 {
		t.Errorf("partition at version %d after a batch sent twice, want 1", v)
	}
	older := mustSync(t, e, "d1", 1, 1, putOp("k", "other"))
	if older.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED {
		t.Errorf("an old batch number answered %v", older.GetStatus())
	}
	if v := mustSync(t, e, "d2", 0, 0).GetVersion(); v != 1 {
		t.Errorf("an old batch number was applied: version %d", v)
	}
}
