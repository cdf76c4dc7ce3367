package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/dalvdb/dalv/store"
)

func testEmptyPartition(t *testing.T, s store.Store) {
	p := user("alice")
	check := func(r store.Reader) error {
		if h, err := r.Head(); err != nil || h != (store.Head{}) {
			return fmt.Errorf("Head() = %+v, %v, want zero", h, err)
		}
		if e, ok, err := r.Get("k"); err != nil || ok {
			return fmt.Errorf("Get(k) = %s, %v", showOK(e, ok), err)
		}
		if es, err := collect(func(fn func(store.Entry) (bool, error)) error { return r.Changes(0, fn) }); err != nil || len(es) > 0 {
			return fmt.Errorf("Changes(0) = %s, %v, want none", shows(es), err)
		}
		if es, err := collect(func(fn func(store.Entry) (bool, error)) error { return r.Scan("", "", fn) }); err != nil || len(es) > 0 {
			return fmt.Errorf("Scan(\"\", \"\") = %s, %v, want none", shows(es), err)
		}
		if b, err := r.DeviceBatch("d"); err != nil || b != 0 {
			return fmt.Errorf("DeviceBatch(d) = %d, %v, want 0", b, err)
		}
		return nil
	}
	view(t, s, p, check)
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		return nil, check(r)
	})
	if err != nil {
		t.Fatalf("in Update: %v", err)
	}
	if got, want := head(t, s, p), (store.Head{}); got != want {
		t.Errorf("Head() after a nil commit = %+v, want %+v", got, want)
	}
}

func testCommitThenRead(t *testing.T, s store.Store) {
	p := user("alice")
	if got, want := commit(t, s, p, store.Commit{
		Entries: []store.Entry{put("b", "2"), put("a", "1")},
		Device:  "d1", Batch: 1, Ops: []byte("ops"),
	}), uint64(1); got != want {
		t.Fatalf("first commit got version %d, want %d", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: 1}); got != want {
		t.Errorf("Head() = %+v, want %+v", got, want)
	}
	if got, want := get(t, s, p, "a"), "a@1=1"; got != want {
		t.Errorf("Get(a) = %s, want %s", got, want)
	}
	if got, want := shows(changes(t, s, p, 0)), "a@1=1 b@1=2"; got != want {
		t.Errorf("Changes(0) = %s, want %s", got, want)
	}
	if got, want := commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "3")}}), uint64(2); got != want {
		t.Fatalf("second commit got version %d, want %d", got, want)
	}
	// An Update's reader sees the same state as a View.
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		e, ok, err := r.Get("a")
		if err != nil {
			return nil, err
		}
		if got, want := fmt.Sprintf("%+v %s", h, showOK(e, ok)), "{Version:2 Horizon:0} a@2=3"; got != want {
			return nil, fmt.Errorf("in Update: head and a = %s, want %s", got, want)
		}
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testEntryFieldsRoundTrip(t *testing.T, s store.Store) {
	p := user("alice")
	binary := []byte{0, 1, 0xff, 0, 0x80}
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		return &store.Commit{Version: 1, Time: base, Entries: []store.Entry{
			{Key: "empty", Value: []byte{}, Version: 1, ScalarVersion: 0},
			{Key: "binary", Value: binary, Version: 1, ScalarVersion: 1},
			{Key: "gone", Deleted: true, Version: 1, ScalarVersion: 1},
			{Key: "ключ/é", Value: []byte("v"), Version: 1, ScalarVersion: 1},
		}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A list op: the version moves, the scalar version stays.
	err = s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		return &store.Commit{Version: 2, Time: base, Entries: []store.Entry{
			{Key: "binary", Value: binary, Version: 2, ScalarVersion: 1},
		}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	view(t, s, p, func(r store.Reader) error {
		for _, tc := range []struct {
			key  string
			want store.Entry
		}{
			{"empty", store.Entry{Key: "empty", Value: []byte{}, Version: 1}},
			{"binary", store.Entry{Key: "binary", Value: binary, Version: 2, ScalarVersion: 1}},
			{"gone", store.Entry{Key: "gone", Deleted: true, Version: 1, ScalarVersion: 1}},
			{"ключ/é", store.Entry{Key: "ключ/é", Value: []byte("v"), Version: 1, ScalarVersion: 1}},
		} {
			got, ok, err := r.Get(tc.key)
			if err != nil {
				return err
			}
			if !ok || got.Key != tc.want.Key || got.Deleted != tc.want.Deleted || got.Version != tc.want.Version ||
				got.ScalarVersion != tc.want.ScalarVersion || !bytes.Equal(got.Value, tc.want.Value) {
				t.Errorf("Get(%q) = %+v, %v, want %+v", tc.key, got, ok, tc.want)
			}
			if got.Deleted && got.Value != nil {
				t.Errorf("Get(%q).Value = %q, want nil for a tombstone", tc.key, got.Value)
			}
		}
		return nil
	})
}

func testLargeValue(t *testing.T, s store.Store) {
	p := user("alice")
	big := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	commit(t, s, p, store.Commit{Entries: []store.Entry{{Key: "big", Value: big}, put("small", "x")}})
	commit(t, s, p, store.Commit{Entries: []store.Entry{{Key: "big2", Value: big}}})
	view(t, s, p, func(r store.Reader) error {
		e, ok, err := r.Get("big")
		if err != nil || !ok || !bytes.Equal(e.Value, big) {
			t.Errorf("Get(big) = %d bytes, %v, %v, want the 1 MiB value", len(e.Value), ok, err)
		}
		es, err := collect(func(fn func(store.Entry) (bool, error)) error { return r.Changes(0, fn) })
		if err != nil || len(es) != 3 || !bytes.Equal(es[0].Value, big) || !bytes.Equal(es[2].Value, big) {
			t.Errorf("Changes(0) = %d entries, %v, want 3 with both big values", len(es), err)
		}
		es, err = collect(func(fn func(store.Entry) (bool, error)) error { return r.Scan("big", "", fn) })
		if err != nil || len(es) != 2 || !bytes.Equal(es[0].Value, big) || !bytes.Equal(es[1].Value, big) {
			t.Errorf("Scan(big) = %d entries, %v, want 2 big values", len(es), err)
		}
		return nil
	})
}

func testChangesOrder(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("b", "1"), put("a", "1"), put("c", "1")}})
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "2"), del("c")}})
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("d", "3"), put("aa", "3")}})
	for _, tc := range []struct {
		after uint64
		want  string
	}{
		// a's entry of version 1 is gone from the index once a is rewritten.
		{0, "b@1=1 a@2=2 c@2(del) aa@3=3 d@3=3"},
		{1, "a@2=2 c@2(del) aa@3=3 d@3=3"},
		{2, "aa@3=3 d@3=3"},
		{3, ""},
		{99, ""},
		{1<<64 - 1, ""},
	} {
		if got := shows(changes(t, s, p, tc.after)); got != tc.want {
			t.Errorf("Changes(%d) = %q, want %q", tc.after, got, tc.want)
		}
	}
}

// testChangesManyVersions orders past version 255, where a store that
// compares versions as little-endian or varint bytes goes wrong.
func testChangesManyVersions(t *testing.T, s store.Store) {
	p := user("alice")
	const n = 300
	for i := range n {
		commit(t, s, p, store.Commit{Entries: []store.Entry{put(fmt.Sprintf("k%03d", n-1-i), "v")}})
	}
	es := changes(t, s, p, 0)
	if got, want := len(es), n; got != want {
		t.Fatalf("Changes(0) = %d entries, want %d", got, want)
	}
	for i, e := range es {
		if got, want := fmt.Sprintf("%s@%d", e.Key, e.Version), fmt.Sprintf("k%03d@%d", n-1-i, i+1); got != want {
			t.Fatalf("Changes(0)[%d] = %s, want %s", i, got, want)
		}
	}
	if got, want := shows(changes(t, s, p, n-1)), "k000@300=v"; got != want {
		t.Errorf("Changes(%d) = %s, want %s", n-1, got, want)
	}
	if got, want := len(changes(t, s, p, 255)), n-255; got != want {
		t.Errorf("Changes(255) = %d entries, want %d", got, want)
	}
}

func testChangesStopAndError(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "1"), put("b", "1"), put("c", "1")}})
	view(t, s, p, func(r store.Reader) error {
		var got []store.Entry
		err := r.Changes(0, func(e store.Entry) (bool, error) {
			got = append(got, e)
			return len(got) < 2, nil
		})
		if err != nil || shows(got) != "a@1=1 b@1=1" {
			t.Errorf("Changes stopping after 2 = %s, %v, want a@1=1 b@1=1", shows(got), err)
		}
		calls := 0
		err = r.Changes(0, func(e store.Entry) (bool, error) {
			calls++
			return true, errBoom
		})
		if !errors.Is(err, errBoom) || calls != 1 {
			t.Errorf("Changes with failing fn = %v after %d calls, want %v after 1", err, calls, errBoom)
		}
		return nil
	})
}

func testScan(t *testing.T, s store.Store) {
	p := user("alice")
	keys := []string{"a", "a/", "a/b", "a/b/c", "a/c", "a/é", "a/\U0010FFFF", "a0", "ab", "b", "a/x"}
	var es []store.Entry
	for _, k := range keys {
		es = append(es, put(k, "1"))
	}
	commit(t, s, p, store.Commit{Entries: es})
	commit(t, s, p, store.Commit{Entries: []store.Entry{del("a/x"), del("zz")}})
	// Another partition whose keys would fall into p's ranges if the store
	// did not keep partitions apart.
	commit(t, s, user("alice/"), store.Commit{Entries: []store.Entry{put("a/", "other")}})
	commit(t, s, user("alic"), store.Commit{Entries: []store.Entry{put("ea/", "other")}})
	for _, tc := range []struct {
		name               string
		prefix, startAfter string
		want               string
	}{
		{"All", "", "", "a a/ a/b a/b/c a/c a/é a/\U0010FFFF a0 ab b"},
		{"AllAfter", "", "a0", "ab b"},
		{"AllAfterLast", "", "b", ""},
		{"Dir", "a/", "", "a/ a/b a/b/c a/c a/é a/\U0010FFFF"},
		{"DirStartBeforePrefix", "a/", "a", "a/ a/b a/b/c a/c a/é a/\U0010FFFF"},
		{"DirStartAtPrefix", "a/", "a/", "a/b a/b/c a/c a/é a/\U0010FFFF"},
		{"DirAfterKey", "a/", "a/b", "a/b/c a/c a/é a/\U0010FFFF"},
		{"DirAfterMissingKey", "a/", "a/bb", "a/c a/é a/\U0010FFFF"},
		{"DirAfterLast", "a/", "a/\U0010FFFF", ""},
		{"DirStartPastPrefix", "a/", "b", ""},
		{"KeyPrefix", "a/b", "", "a/b a/b/c"},
		{"HighRune", "a/\U0010FFFF", "", "a/\U0010FFFF"},
		{"Sibling", "a0", "", "a0"},
		{"ExactKey", "ab", "", "ab"},
		{"TombstonesOnly", "a/x", "", ""},
		{"Missing", "c", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var keys []string
			for _, e := range scan(t, s, p, tc.prefix, tc.startAfter) {
				if e.Deleted {
					t.Errorf("Scan returned tombstone %s", show(e))
				}
				keys = append(keys, e.Key)
			}
			if got := strings.Join(keys, " "); got != tc.want {
				t.Errorf("Scan(%q, %q) = %q, want %q", tc.prefix, tc.startAfter, got, tc.want)
			}
		})
	}
}

func testScanStopAndError(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "1"), put("b", "1"), put("c", "1")}})
	view(t, s, p, func(r store.Reader) error {
		var got []store.Entry
		err := r.Scan("", "", func(e store.Entry) (bool, error) {
			got = append(got, e)
			return false, nil
		})
		if err != nil || shows(got) != "a@1=1" {
			t.Errorf("Scan stopping after 1 = %s, %v, want a@1=1", shows(got), err)
		}
		err = r.Scan("", "", func(e store.Entry) (bool, error) { return true, errBoom })
		if !errors.Is(err, errBoom) {
			t.Errorf("Scan with failing fn = %v, want %v", err, errBoom)
		}
		return nil
	})
}

func testDeviceBatch(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Device: "d1", Batch: 1})
	commit(t, s, p, store.Commit{Device: "d1", Batch: 7, Entries: []store.Entry{put("a", "1")}})
	commit(t, s, p, store.Commit{Device: "d2", Batch: 3})
	commit(t, s, p, store.Commit{Batch: 9}) // no device: nothing recorded
	commit(t, s, user("bob"), store.Commit{Device: "d1", Batch: 100})
	for _, tc := range []struct {
		p      store.Partition
		device string
		want   uint64
	}{
		{p, "d1", 7},
		{p, "d2", 3},
		{p, "d3", 0},
		{p, "", 0},
		{user("bob"), "d1", 100},
		{user("bob"), "d2", 0},
	} {
		if got := deviceBatch(t, s, tc.p, tc.device); got != tc.want {
			t.Errorf("%s DeviceBatch(%q) = %d, want %d", tc.p, tc.device, got, tc.want)
		}
	}
	if got, want := head(t, s, p).Version, uint64(4); got != want {
		t.Errorf("Head().Version = %d, want %d", got, want)
	}

	// Many devices taking turns, each coming back after the others wrote:
	// every one's last batch is kept, whichever way a store keeps them.
	carol := user("carol")
	const devices, rounds = 9, 3
	for r := 1; r <= rounds; r++ {
		for d := range devices {
			commit(t, s, carol, store.Commit{Device: fmt.Sprintf("dev%d", d), Batch: uint64(10*r + d)})
		}
		if r == 2 { // one device writes again at once, then the others
			commit(t, s, carol, store.Commit{Device: "dev8", Batch: 99})
		}
	}
	for d := range devices {
		want := uint64(10*rounds + d)
		if got := deviceBatch(t, s, carol, fmt.Sprintf("dev%d", d)); got != want {
			t.Errorf("%s DeviceBatch(dev%d) = %d, want %d", carol, d, got, want)
		}
	}
}
