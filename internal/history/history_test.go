package history

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// seq makes a sequential history: each call ends before the next starts.
func seq(calls ...Call) []Call {
	for i := range calls {
		calls[i].start, calls[i].end = int64(2*i), int64(2*i+1)
		if calls[i].Partition == "" {
			calls[i].Partition = "u:a"
		}
	}
	return calls
}

func put(k, v string) []Op { return []Op{{Kind: Put, Key: k, Value: v}} }

func del(k string) []Op { return []Op{{Kind: Delete, Key: k}} }

func add(k, e string) []Op { return []Op{{Kind: ListAdd, Key: k, Value: e}} }

func remove(k, e string) []Op { return []Op{{Kind: ListRemove, Key: k, Value: e}} }

// TestCheckFindsEachBreach feeds the checker histories that break each rule
// of the model, and one that keeps them: it must tell them apart.
func TestCheckFindsEachBreach(t *testing.T) {
	t.Parallel()
	good := seq(
		Call{Kind: Sync, Device: "d1", Batch: 1, Base: 0, Ops: put("k", "1"), Outcome: OK, Version: 1},
		Call{Kind: Sync, Device: "d2", Batch: 1, Base: 0, Ops: put("k", "2"), Outcome: Conflict, Version: 1},
		Call{Kind: Sync, Device: "d2", Batch: 1, Base: 1, Ops: put("k", "2"), Outcome: OK, Version: 2},
		Call{Kind: Sync, Device: "d2", Batch: 1, Base: 1, Ops: put("k", "2"), Outcome: OK, Version: 2}, // a retry
		Call{Kind: Commit, Expect: true, Expected: 2, Ops: put("j", "b"), Outcome: OK, Version: 3},
		Call{Kind: Commit, Expect: true, Expected: 2, Ops: put("j", "c"), Outcome: Stale},
		Call{Kind: Sync, Device: "d1", Batch: 2, Base: 1, Ops: put("j", "x"), Outcome: Conflict, Version: 3},
		Call{Kind: Commit, Ops: put("k", "3"), Outcome: Unknown},
		Call{Kind: Get, Keys: []string{"k", "j", "z"}, Outcome: OK, Version: 4, Values: map[string]string{"k": "3", "j": "b"}},
		Call{Kind: Sync, Device: "d1", Batch: 3, Base: 4, Ops: put("z", "9"), Outcome: Unknown},
		Call{Kind: Get, Keys: []string{"z"}, Outcome: OK, Version: 5, Values: map[string]string{"z": "9"}},
		Call{Kind: Sync, Device: "d1", Batch: 3, Base: 4, Ops: put("z", "9"), Outcome: OK, Version: 5}, // the retry
		Call{Kind: Commit, Expect: true, Expected: 4, Ops: put("j", "q"), Outcome: Unknown},
		Call{Kind: Get, Keys: []string{"j"}, Outcome: Unknown},
		Call{Kind: Get, Keys: []string{"j"}, Outcome: OK, Version: 5, Values: map[string]string{"j": "b"}},
		// List ops on both sides merge; a DELETE conflicts with them.
		Call{Kind: Sync, Device: "d1", Batch: 4, Base: 5, Ops: add("l", "a"), Outcome: OK, Version: 6},
		Call{Kind: Sync, Device: "d2", Batch: 2, Base: 5, Ops: add("l", "b"), Outcome: OK, Version: 7},
		Call{Kind: Sync, Device: "d3", Batch: 1, Base: 5, Ops: append(remove("l", "a"), add("l", "a")...), Outcome: OK, Version: 8},
		Call{Kind: Get, Keys: []string{"l"}, Outcome: OK, Version: 8, Values: map[string]string{"l": "[b a]"}},
		Call{Kind: Sync, Device: "d3", Batch: 2, Base: 8, Ops: add("l", "b"), Outcome: OK, Version: 9}, // changes nothing, takes a version
		Call{Kind: Commit, Ops: del("k"), Outcome: OK, Version: 10},
		Call{Kind: Sync, Device: "d1", Batch: 5, Base: 9, Ops: del("l"), Outcome: OK, Version: 11},
		Call{Kind: Sync, Device: "d2", Batch: 3, Base: 9, Ops: add("l", "c"), Outcome: Conflict, Version: 11},
		Call{Kind: Get, Keys: []string{"k", "l"}, Outcome: OK, Version: 11, Values: map[string]string{}},
		// A commit under an idempotency key applies once; its retries are
		// answered with its version, even once it is stale.
		Call{Kind: Commit, Key: "c1", Device: "b", Batch: 1, Expect: true, Expected: 11, Ops: put("k", "c"), Outcome: Unknown},
		Call{Kind: Commit, Key: "c1", Device: "b", Batch: 1, Expect: true, Expected: 11, Ops: put("k", "c"), Outcome: OK, Version: 12},
		Call{Kind: Commit, Ops: put("j", "d"), Outcome: OK, Version: 13},
		Call{Kind: Commit, Key: "c1", Device: "b", Batch: 1, Expect: true, Expected: 11, Ops: put("k", "c"), Outcome: OK, Version: 12},
		Call{Kind: Commit, Key: "c2", Device: "b", Batch: 2, Expect: true, Expected: 11, Ops: put("k", "e"), Outcome: Stale},
		// A list reads pages of the live keys under a prefix, in key order.
		Call{Kind: List, Prefix: "", Keys: []string{"j", "k"}, More: true, Outcome: OK, Version: 13, Values: map[string]string{"j": "d", "k": "c"}},
		Call{Kind: List, Prefix: "", After: "k", Keys: []string{"z"}, Outcome: OK, Version: 13, Values: map[string]string{"z": "9"}},
		Call{Kind: List, Prefix: "l", Outcome: OK, Version: 13},
		Call{Kind: List, Prefix: "k", Outcome: Unknown},
		// A pull answers every key changed after its base once, tombstones
		// included, in the order of their versions.
		Call{Kind: Sync, Device: "d9", Base: 11, Outcome: OK, Version: 13, Pulled: true, Changes: []Change{{"k", "c", false, 12}, {"j", "d", false, 13}}},
		Call{Kind: Sync, Device: "d9", Base: 10, Outcome: OK, Version: 13, Pulled: true, Changes: []Change{{"l", "", true, 11}, {"k", "c", false, 12}, {"j", "d", false, 13}}},
		Call{Kind: Sync, Device: "d9", Base: 13, Outcome: Unknown},
		// A sync's answer includes its own ops, and a retry is answered from the head.
		Call{Kind: Sync, Device: "d9", Batch: 1, Base: 13, Ops: put("z", "8"), Outcome: OK, Version: 14, Pulled: true, Changes: []Change{{"z", "8", false, 14}}},
		Call{Kind: Commit, Ops: put("j", "e"), Outcome: OK, Version: 15},
		Call{Kind: Sync, Device: "d9", Batch: 1, Base: 13, Ops: put("z", "8"), Outcome: OK, Version: 15, Pulled: true, Changes: []Change{{"z", "8", false, 14}, {"j", "e", false, 15}}},
		// An answer cut in pages holds the keys last changed up to its
		// version, short of the partition's, where the device goes on.
		Call{Kind: Sync, Device: "d8", Base: 11, Outcome: OK, Version: 12, More: true, Pulled: true, Changes: []Change{{"k", "c", false, 12}}},
		Call{Kind: Sync, Device: "d8", Base: 12, Outcome: OK, Version: 14, More: true, Pulled: true, Changes: []Change{{"z", "8", false, 14}}},
		Call{Kind: Sync, Device: "d8", Base: 14, Outcome: OK, Version: 15, Pulled: true, Changes: []Change{{"j", "e", false, 15}}},
		Call{Kind: Sync, Device: "d8", Batch: 1, Base: 11, Ops: put("y", "1"), Outcome: OK, Version: 12, More: true, Pulled: true, Changes: []Change{{"k", "c", false, 12}}},
		Call{Kind: Sync, Device: "d8", Batch: 1, Base: 11, Ops: put("y", "1"), Outcome: OK, Version: 14, More: true, Pulled: true, Changes: []Change{{"k", "c", false, 12}, {"z", "8", false, 14}}}, // a retry
		Call{Kind: Sync, Device: "d7", Batch: 1, Base: 11, Ops: put("k", "7"), Outcome: Conflict, Version: 12, More: true, Pulled: true, Changes: []Change{{"k", "c", false, 12}}},
	)
	if r := Check(good, 10*time.Second); !r.OK() {
		t.Fatalf("a history that keeps the rules failed the check:\n%v", r.Failed)
	}
	for name, h := range map[string][]Call{
		"versions not dense": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("k", "2"), Outcome: OK, Version: 3},
		),
		"a batch applied twice": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 1},
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 2},
		),
		"accepted over a change after its base": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Sync, Device: "d1", Batch: 1, Base: 0, Ops: put("k", "1"), Outcome: OK, Version: 2},
		),
		"a conflict with no change after the base": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Sync, Device: "d1", Batch: 1, Base: 1, Ops: put("k", "1"), Outcome: Conflict, Version: 1},
		),
		"a commit applied at another version than expected": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Expect: true, Expected: 5, Ops: put("k", "c"), Outcome: OK, Version: 2},
		),
		"a read of a value never written": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Get, Keys: []string{"k"}, Outcome: OK, Version: 1, Values: map[string]string{"k": "z"}},
		),
		"a batch applied after a later batch of its device": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: Unknown},
			Call{Kind: Sync, Device: "d1", Batch: 2, Ops: put("j", "2"), Outcome: OK, Version: 1},
			Call{Kind: Get, Keys: []string{"k"}, Outcome: OK, Version: 2, Values: map[string]string{"k": "1"}},
		),
		"an unanswered commit applied after its expected version passed": seq(
			Call{Kind: Commit, Expect: true, Expected: 0, Ops: put("k", "c"), Outcome: Unknown},
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("j", "1"), Outcome: OK, Version: 1},
			Call{Kind: Get, Keys: []string{"k"}, Outcome: OK, Version: 2, Values: map[string]string{"k": "c"}},
		),
		"list ops on both sides answered as a conflict": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: add("l", "a"), Outcome: OK, Version: 1},
			Call{Kind: Sync, Device: "d2", Batch: 1, Ops: add("l", "b"), Outcome: Conflict, Version: 1},
		),
		"a list op accepted over a DELETE after its base": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: add("l", "a"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: del("l"), Outcome: OK, Version: 2},
			Call{Kind: Sync, Device: "d2", Batch: 1, Base: 1, Ops: add("l", "b"), Outcome: OK, Version: 3},
		),
		"a DELETE accepted over a list op after its base": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: add("l", "a"), Outcome: OK, Version: 1},
			Call{Kind: Sync, Device: "d2", Batch: 1, Ops: del("l"), Outcome: OK, Version: 2},
		),
		"a list read out of order": seq(
			Call{Kind: Commit, Ops: append(add("l", "a"), add("l", "b")...), Outcome: OK, Version: 1},
			Call{Kind: Get, Keys: []string{"l"}, Outcome: OK, Version: 1, Values: map[string]string{"l": "[b a]"}},
		),
		"a deleted key read": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: del("k"), Outcome: OK, Version: 2},
			Call{Kind: Get, Keys: []string{"k"}, Outcome: OK, Version: 2, Values: map[string]string{"k": "b"}},
		),
		"a list op on a scalar accepted": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: add("k", "x"), Outcome: OK, Version: 2},
		),
		"a list that skips a key": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: List, Keys: []string{"k"}, More: true, Outcome: OK, Version: 2, Values: map[string]string{"k": "b"}},
		),
		"a last page that ends early": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: List, Keys: []string{"j"}, Outcome: OK, Version: 2, Values: map[string]string{"j": "c"}},
		),
		"a list of a deleted key": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: del("k"), Outcome: OK, Version: 2},
			Call{Kind: List, Keys: []string{"k"}, Outcome: OK, Version: 2, Values: map[string]string{"k": "b"}},
		),
		"a list out of key order": seq(
			Call{Kind: Commit, Ops: append(put("k", "b"), put("j", "c")...), Outcome: OK, Version: 1},
			Call{Kind: List, Keys: []string{"k", "j"}, Outcome: OK, Version: 1, Values: map[string]string{"k": "b", "j": "c"}},
		),
		"a page after a key that holds it": seq(
			Call{Kind: Commit, Ops: append(put("k", "b"), put("j", "c")...), Outcome: OK, Version: 1},
			Call{Kind: List, After: "j", Keys: []string{"j", "k"}, Outcome: OK, Version: 1, Values: map[string]string{"k": "b", "j": "c"}},
		),
		"a pull that misses a change": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: Sync, Device: "d1", Base: 0, Outcome: OK, Version: 2, Pulled: true, Changes: []Change{{"j", "c", false, 2}}},
		),
		"a pull out of version order": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: Sync, Device: "d1", Base: 0, Outcome: OK, Version: 2, Pulled: true, Changes: []Change{{"j", "c", false, 2}, {"k", "b", false, 1}}},
		),
		"a pull with a stale value": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("k", "c"), Outcome: OK, Version: 2},
			Call{Kind: Sync, Device: "d1", Base: 0, Outcome: OK, Version: 2, Pulled: true, Changes: []Change{{"k", "b", false, 2}}},
		),
		"a pull without a tombstone": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: del("k"), Outcome: OK, Version: 2},
			Call{Kind: Sync, Device: "d1", Base: 1, Outcome: OK, Version: 2, Pulled: true},
		),
		"a sync answer without its own ops": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 1, Pulled: true},
		),
		"a conflict answer without the change it met": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Sync, Device: "d1", Batch: 1, Base: 0, Ops: put("k", "1"), Outcome: Conflict, Version: 1, Pulled: true},
		),
		"a retry answered from an old version": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 1, Pulled: true, Changes: []Change{{"k", "1", false, 1}}},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 1, Pulled: true, Changes: []Change{{"k", "1", false, 1}}},
		),
		"a page that misses a change below its cut": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: Commit, Ops: put("i", "d"), Outcome: OK, Version: 3},
			Call{Kind: Sync, Device: "d1", Base: 0, Outcome: OK, Version: 2, More: true, Pulled: true, Changes: []Change{{"j", "c", false, 2}}},
		),
		"a page that holds a change past its cut": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: Sync, Device: "d1", Base: 0, Outcome: OK, Version: 1, More: true, Pulled: true, Changes: []Change{{"k", "b", false, 1}, {"j", "c", false, 2}}},
		),
		"a page with a key's older change": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Ops: put("j", "c"), Outcome: OK, Version: 2},
			Call{Kind: Commit, Ops: put("k", "d"), Outcome: OK, Version: 3},
			Call{Kind: Sync, Device: "d1", Base: 0, Outcome: OK, Version: 2, More: true, Pulled: true, Changes: []Change{{"k", "b", false, 1}, {"j", "c", false, 2}}},
		),
		"a page cut at the partition's version": seq(
			Call{Kind: Commit, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Sync, Device: "d1", Base: 0, Outcome: OK, Version: 1, More: true, Pulled: true, Changes: []Change{{"k", "b", false, 1}}},
		),
		"a commit under one idempotency key applied twice": seq(
			Call{Kind: Commit, Key: "c1", Device: "b", Batch: 1, Ops: put("k", "b"), Outcome: OK, Version: 1},
			Call{Kind: Commit, Key: "c1", Device: "b", Batch: 1, Ops: put("k", "b"), Outcome: OK, Version: 2},
		),
		"a lost acknowledged write": seq(
			Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 1},
			Call{Kind: Get, Keys: []string{"k"}, Outcome: OK, Version: 0},
		),
	} {
		if r := Check(h, 10*time.Second); r.OK() {
			t.Errorf("%s: the check passed a history that breaks the rules", name)
		} else if r.Failed["u:a"] == "" {
			t.Errorf("%s: the failure does not print the partition's history", name)
		}
	}
}

// TestEffectEnd checks where an unanswered call's effect is drawn in to:
// the first answer that rules it out, or never.
func TestEffectEnd(t *testing.T) {
	t.Parallel()
	h := seq(
		Call{Kind: Sync, Device: "d1", Batch: 4, Ops: put("k", "1"), Outcome: Unknown},              // 0-1
		Call{Kind: Sync, Device: "d2", Batch: 9, Ops: put("k", "2"), Outcome: OK, Version: 1},       // 2-3
		Call{Kind: Sync, Device: "d1", Batch: 3, Ops: put("k", "3"), Outcome: OK, Version: 2},       // 4-5
		Call{Kind: Sync, Device: "d1", Batch: 4, Ops: put("k", "1"), Outcome: OK, Version: 3},       // 6-7
		Call{Kind: Commit, Expect: true, Expected: 3, Ops: put("j", "1"), Outcome: Unknown},         // 8-9
		Call{Kind: Get, Keys: []string{"j"}, Outcome: OK, Version: 3},                               // 10-11
		Call{Kind: Commit, Ops: put("j", "2"), Outcome: Stale},                                      // 12-13
		Call{Kind: Sync, Device: "d3", Batch: 1, Ops: put("j", "3"), Outcome: Conflict, Version: 4}, // 14-15
		Call{Kind: Commit, Ops: put("j", "4"), Outcome: Unknown},                                    // 16-17
		Call{Kind: Commit, Key: "c", Device: "b", Batch: 1, Ops: put("j", "5"), Outcome: Unknown},   // 18-19
		Call{Kind: Commit, Key: "c", Device: "b", Batch: 1, Ops: put("j", "5"), Outcome: Stale},     // 20-21
	)
	for i, want := range map[int]int64{
		0: 7,     // d1's batch 4 accepted by its retry; d2's and d1's earlier batch do not rule it out
		3: 7,     // an answered call keeps its end
		4: 15,    // the conflict at version 4 is past the expected 3; the read at 3 is not
		8: never, // a commit without an expected version may apply at any time
		9: 21,    // a retry under its idempotency key was answered
	} {
		if got := effectEnd(h[i], h); got != want {
			t.Errorf("call %d: effect ends at %d, want %d", i, got, want)
		}
	}
}

func TestSaveLoad(t *testing.T) {
	t.Parallel()
	calls := seq(
		Call{Kind: Sync, Device: "d1", Batch: 1, Ops: put("k", "1"), Outcome: OK, Version: 1},
		Call{Kind: List, Prefix: "k", Keys: []string{"k"}, Outcome: OK, Version: 1, Values: map[string]string{"k": "1"}},
	)
	calls[1].client = 3
	path := t.TempDir() + "/h.json"
	if err := Save(path, calls); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].start != calls[1].start || got[1].end != calls[1].end || got[1].client != 3 || got[1].Keys[0] != "k" {
		t.Fatalf("loaded %+v, want %+v", got, calls)
	}
	if r := Check(got, time.Second); !r.OK() {
		t.Fatalf("the loaded history fails: %v", r.Failed)
	}
}

// TestCheckSaved checks a history a test saved (DALV_HISTORY_FILE), with
// DALV_HISTORY_CHECK_MINUTES minutes (default 10) for the check: for a
// history whose check ran out of time in its test.
func TestCheckSaved(t *testing.T) {
	path := os.Getenv("DALV_HISTORY_FILE")
	if path == "" {
		t.Skip("set DALV_HISTORY_FILE to a history a test saved")
	}
	calls, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	minutes := 10
	if n, err := strconv.Atoi(os.Getenv("DALV_HISTORY_CHECK_MINUTES")); err == nil && n > 0 {
		minutes = n
	}
	start := time.Now()
	r := Check(calls, time.Duration(minutes)*time.Minute)
	t.Logf("%d calls (%d unknown) on %d partitions checked in %v", r.Calls, r.Unknown, r.Partitions, time.Since(start).Round(time.Millisecond))
	for p, h := range r.Failed {
		t.Errorf("%s:\n%s", p, h)
	}
}
